;; second_flag.wat: a v1.3.0 migration for the scenarios that chain upgrades (scenarios/chained_upgrades_rollback.toml).
;;
;; It is examples/wat/feature_flag.wat with two same-length substitutions, so every data offset and
;; length of the original stays valid: "1.2.0" -> "1.3.0" and "new_feature_enabled" -> "second_feature_flag"
;; (19 bytes each). So it sets global.version to "1.3.0" and gives every member "second_feature_flag": true,
;; a change that is visible in GET /state and distinct from v1.2.0's. Regenerate it with:
;;   sed -e 's/1\.2\.0/1.3.0/g' -e 's/new_feature_enabled/second_feature_flag/g' examples/wat/feature_flag.wat
;; (then put this header back). The comments below are the original's, substituted alike.
;; feature_flag.wat: the spec's v1.3.0 migration, written by hand in WebAssembly text (ABI 2, "plain").
;;
;; What it does (the same as the spec's Rust crate, examples/rust/upgrade_v1_2_0):
;;   - every object in global.nodes gets "second_feature_flag": true;
;;   - global.version becomes "1.3.0" (added when missing; a missing or null "global" becomes
;;     {"nodes":null,"version":"1.3.0"} and a global without "nodes" gets "nodes": null, because the Rust
;;     crate's `state["global"]["nodes"]` index inserts them: same input, same output, quirks included).
;; Everything else is copied through unchanged; insignificant whitespace is dropped.
;;
;; Why it streams instead of parsing: WAT has no JSON library, and a migration this small does not need a
;; tree. A recursive-descent pass copies the input to the output and changes only the places it must,
;; so it runs in one pass over the bytes with memory = input + output. The price is that keys are
;; compared by their raw spelling: "global" written as "glob\u0061l" would not be recognised. The node
;; passes its state as canonical JSON (keys sorted, no whitespace, UTF-8, no \u escapes for letters), so
;; for real input this is exactly the Rust crate's result.
;;
;; It trusts its input to be valid JSON (the node only ever passes JSON it produced) and traps with
;; `unreachable` on anything it does not understand, like the Rust crate's `expect("Invalid JSON")`.
;;
;; ABI 2: exports `memory`, `alloc(len) -> ptr`, `upgrade(ptr, len) -> i64` and
;; `get_upgrade_info() -> i64`, the i64 results being (ptr << 32) | len of a UTF-8 JSON text.
;;
;; Try it:  synapse package test examples/wat/feature_flag.wat --state examples/state.json --version 1.3.0 --diff
(module
  (memory (export "memory") 1)

  ;; Constant texts, at fixed offsets in the first page.
  (data (i32.const 16)  "{\"version\":\"1.3.0\",\"description\":\"Add second_feature_flag flag\",\"breaking\":false}")
  (data (i32.const 128) "global")                      ;; 6 bytes
  (data (i32.const 136) "nodes")                       ;; 5 bytes
  (data (i32.const 144) "version")                     ;; 7 bytes
  (data (i32.const 152) "second_feature_flag")         ;; 19 bytes
  (data (i32.const 176) "\"1.3.0\"")                   ;; 7 bytes
  (data (i32.const 184) "\"version\":\"1.3.0\"")       ;; 17 bytes
  (data (i32.const 208) "\"second_feature_flag\":true") ;; 26 bytes
  (data (i32.const 240) "\"global\":{\"nodes\":null,\"version\":\"1.3.0\"}") ;; 41 bytes
  (data (i32.const 288) "{\"nodes\":null,\"version\":\"1.3.0\"}")     ;; 32 bytes
  (data (i32.const 320) "true")                        ;; 4 bytes
  (data (i32.const 328) "\"nodes\":null")              ;; 12 bytes

  ;; Where an object sits in the state decides what happens to it.
  ;;   0 = anywhere else, 1 = the root, 2 = global, 3 = global.nodes, 4 = one node
  (global $heap (mut i32) (i32.const 1024)) ;; bump allocator: nothing is ever freed
  (global $in (mut i32) (i32.const 0))      ;; next input byte
  (global $end (mut i32) (i32.const 0))     ;; one past the last input byte
  (global $out (mut i32) (i32.const 0))     ;; next output byte

  ;; Make linear memory at least $bytes long (an unsigned address), or trap like a Rust allocator that
  ;; was refused memory. Grows 1 MiB more than needed so that a long output grows rarely; near the
  ;; memory limit it settles for exactly what is needed.
  (func $reserve (param $bytes i32)
    (local $missing_bytes i64)
    (local $missing_pages i64)
    (local.set $missing_bytes (i64.sub (i64.extend_i32_u (local.get $bytes))
                                       (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16))))
    (if (i64.gt_s (local.get $missing_bytes) (i64.const 0))
      (then
        (local.set $missing_pages (i64.shr_u (i64.add (local.get $missing_bytes) (i64.const 65535)) (i64.const 16)))
        (if (i32.eq (memory.grow (i32.wrap_i64 (i64.add (local.get $missing_pages) (i64.const 16)))) (i32.const -1))
          (then
            (if (i32.eq (memory.grow (i32.wrap_i64 (local.get $missing_pages))) (i32.const -1))
              (then unreachable)))))))

  (func (export "alloc") (param $len i32) (result i32)
    (local $pointer i32)
    (local.set $pointer (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (call $reserve (global.get $heap))
    (local.get $pointer))

  (func $emit_bytes (param $source i32) (param $len i32)
    (call $reserve (i32.add (global.get $out) (local.get $len)))
    (memory.copy (global.get $out) (local.get $source) (local.get $len))
    (global.set $out (i32.add (global.get $out) (local.get $len))))

  (func $emit_byte (param $byte i32)
    (call $reserve (i32.add (global.get $out) (i32.const 1)))
    (i32.store8 (global.get $out) (local.get $byte))
    (global.set $out (i32.add (global.get $out) (i32.const 1))))

  ;; The next input byte, or -1 at the end.
  (func $peek (result i32)
    (if (result i32) (i32.lt_u (global.get $in) (global.get $end))
      (then (i32.load8_u (global.get $in)))
      (else (i32.const -1))))

  ;; The hot loops below (whitespace, strings, scalars) read bytes directly instead of calling $peek:
  ;; most of the state is string bytes, and a call per byte costs more than the work.
  (func $skip_whitespace
    (local $byte i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (global.get $in) (global.get $end)))
        (local.set $byte (i32.load8_u (global.get $in)))
        (br_if $done (i32.eqz (i32.or (i32.or (i32.eq (local.get $byte) (i32.const 32)) (i32.eq (local.get $byte) (i32.const 9)))
                                      (i32.or (i32.eq (local.get $byte) (i32.const 10)) (i32.eq (local.get $byte) (i32.const 13))))))
        (global.set $in (i32.add (global.get $in) (i32.const 1)))
        (br $next))))

  ;; Consume the byte $expected, or trap.
  (func $expect (param $expected i32)
    (if (i32.ne (call $peek) (local.get $expected)) (then unreachable))
    (global.set $in (i32.add (global.get $in) (i32.const 1))))

  ;; Copy one string, quotes and escapes included; return the length of its raw content.
  (func $copy_string (result i32)
    (local $start i32)
    (local $at i32)
    (local $byte i32)
    (local.set $start (global.get $in))
    (call $expect (i32.const 34))
    (local.set $at (global.get $in))
    (block $closed
      (loop $next
        (if (i32.ge_u (local.get $at) (global.get $end)) (then unreachable))
        (local.set $byte (i32.load8_u (local.get $at)))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br_if $closed (i32.eq (local.get $byte) (i32.const 34)))
        (if (i32.eq (local.get $byte) (i32.const 92)) ;; a backslash escapes the next byte
          (then (local.set $at (i32.add (local.get $at) (i32.const 1)))))
        (br $next)))
    (if (i32.gt_u (local.get $at) (global.get $end)) (then unreachable))
    (global.set $in (local.get $at))
    (call $emit_bytes (local.get $start) (i32.sub (local.get $at) (local.get $start)))
    (i32.sub (i32.sub (local.get $at) (local.get $start)) (i32.const 2)))

  ;; Copy a number, true, false or null: everything up to the next delimiter.
  (func $copy_scalar
    (local $start i32)
    (local $at i32)
    (local $byte i32)
    (local.set $start (global.get $in))
    (local.set $at (local.get $start))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $at) (global.get $end)))
        (local.set $byte (i32.load8_u (local.get $at)))
        (br_if $done (i32.eq (local.get $byte) (i32.const 44)))  ;; ,
        (br_if $done (i32.eq (local.get $byte) (i32.const 125))) ;; }
        (br_if $done (i32.eq (local.get $byte) (i32.const 93)))  ;; ]
        (br_if $done (i32.le_u (local.get $byte) (i32.const 32))) ;; whitespace
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $next)))
    (if (i32.eq (local.get $at) (local.get $start)) (then unreachable))
    (global.set $in (local.get $at))
    (call $emit_bytes (local.get $start) (i32.sub (local.get $at) (local.get $start))))

  ;; Does the key at $key (raw, $key_len bytes) equal the constant at $name ($name_len bytes)?
  (func $key_is (param $key i32) (param $key_len i32) (param $name i32) (param $name_len i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $key_len) (local.get $name_len)) (then (return (i32.const 0))))
    (block $differ
      (loop $next
        (if (i32.eq (local.get $i) (local.get $key_len)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (i32.add (local.get $key) (local.get $i)))
                               (i32.load8_u (i32.add (local.get $name) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func $value (param $place i32)
    (local $byte i32)
    (call $skip_whitespace)
    (local.set $byte (call $peek))
    (if (i32.eq (local.get $byte) (i32.const 123)) (then (call $object (local.get $place)) (return)))
    (if (i32.eq (local.get $byte) (i32.const 91)) (then (call $array) (return)))
    (if (i32.eq (local.get $byte) (i32.const 34)) (then (drop (call $copy_string)) (return)))
    (call $copy_scalar))

  ;; Read a value but write $replacement ($len bytes) in its place.
  (func $replace_value (param $replacement i32) (param $len i32)
    (local $mark i32)
    (local.set $mark (global.get $out))
    (call $value (i32.const 0))
    (global.set $out (local.get $mark))
    (call $emit_bytes (local.get $replacement) (local.get $len)))

  (func $array
    (call $expect (i32.const 91))
    (call $emit_byte (i32.const 91))
    (call $skip_whitespace)
    (if (i32.eq (call $peek) (i32.const 93))
      (then (call $expect (i32.const 93)) (call $emit_byte (i32.const 93)) (return)))
    (loop $next
      (call $value (i32.const 0))
      (call $skip_whitespace)
      (if (i32.eq (call $peek) (i32.const 44))
        (then (call $expect (i32.const 44)) (call $emit_byte (i32.const 44)) (br $next))))
    (call $expect (i32.const 93))
    (call $emit_byte (i32.const 93)))

  ;; One member's value, given where its object sits and the member's key.
  ;; Returns the bits of $seen (see $append_missing) that this member accounts for.
  (func $member_value (param $place i32) (param $key i32) (param $key_len i32) (result i32)
    (if (i32.and (i32.eq (local.get $place) (i32.const 1)) (call $key_is (local.get $key) (local.get $key_len) (i32.const 128) (i32.const 6)))
      (then
        (call $skip_whitespace)
        (if (i32.eq (call $peek) (i32.const 123))
          (then (call $object (i32.const 2)) (return (i32.const 1))))
        (if (i32.ne (call $peek) (i32.const 110)) (then unreachable)) ;; like Rust: only null becomes an object
        (call $replace_value (i32.const 288) (i32.const 32))
        (return (i32.const 1))))
    (if (i32.eq (local.get $place) (i32.const 2))
      (then
        (if (call $key_is (local.get $key) (local.get $key_len) (i32.const 136) (i32.const 5))
          (then (call $value (i32.const 3)) (return (i32.const 2))))
        (if (call $key_is (local.get $key) (local.get $key_len) (i32.const 144) (i32.const 7))
          (then (call $replace_value (i32.const 176) (i32.const 7)) (return (i32.const 1))))))
    (if (i32.eq (local.get $place) (i32.const 3))
      (then (call $value (i32.const 4)) (return (i32.const 0))))
    (if (i32.and (i32.eq (local.get $place) (i32.const 4)) (call $key_is (local.get $key) (local.get $key_len) (i32.const 152) (i32.const 19)))
      (then (call $replace_value (i32.const 320) (i32.const 4))
            (return (i32.const 1))))
    (call $value (i32.const 0))
    (i32.const 0))

  (func $object (param $place i32)
    (local $members i32)
    (local $seen i32)
    (local $key i32)
    (local $key_len i32)
    (call $expect (i32.const 123))
    (call $emit_byte (i32.const 123))
    (call $skip_whitespace)
    (if (i32.ne (call $peek) (i32.const 125))
      (then
        (loop $next
          (call $skip_whitespace)
          (if (local.get $members) (then (call $emit_byte (i32.const 44))))
          (local.set $key (i32.add (global.get $in) (i32.const 1)))
          (local.set $key_len (call $copy_string))
          (call $skip_whitespace)
          (call $expect (i32.const 58))
          (call $emit_byte (i32.const 58))
          (local.set $members (i32.add (local.get $members) (i32.const 1)))
          (local.set $seen (i32.or (local.get $seen)
                                   (call $member_value (local.get $place) (local.get $key) (local.get $key_len))))
          (call $skip_whitespace)
          (if (i32.eq (call $peek) (i32.const 44))
            (then (call $expect (i32.const 44)) (br $next))))))
    (call $expect (i32.const 125))
    (call $append_missing (local.get $place) (local.get $members) (local.get $seen))
    (call $emit_byte (i32.const 125)))

  ;; The members the migration sets, when the object did not have them. $seen: bit 1 = the member the
  ;; migration sets here (global, version, second_feature_flag), bit 2 = global.nodes. A global without
  ;; "nodes" gets "nodes": null, exactly as the Rust crate's `state["global"]["nodes"]` index inserts it.
  (func $append_missing (param $place i32) (param $members i32) (param $seen i32)
    (if (i32.and (i32.eq (local.get $place) (i32.const 2)) (i32.eqz (i32.and (local.get $seen) (i32.const 2))))
      (then
        (if (local.get $members) (then (call $emit_byte (i32.const 44))))
        (call $emit_bytes (i32.const 328) (i32.const 12))
        (local.set $members (i32.add (local.get $members) (i32.const 1)))))
    (if (i32.and (local.get $seen) (i32.const 1)) (then (return)))
    (if (i32.eq (local.get $place) (i32.const 1)) (then (call $emit_member (local.get $members) (i32.const 240) (i32.const 41))))
    (if (i32.eq (local.get $place) (i32.const 2)) (then (call $emit_member (local.get $members) (i32.const 184) (i32.const 17))))
    (if (i32.eq (local.get $place) (i32.const 4)) (then (call $emit_member (local.get $members) (i32.const 208) (i32.const 26)))))

  (func $emit_member (param $members i32) (param $text i32) (param $len i32)
    (if (local.get $members) (then (call $emit_byte (i32.const 44))))
    (call $emit_bytes (local.get $text) (local.get $len)))

  (func (export "upgrade") (param $pointer i32) (param $len i32) (result i64)
    (local $start i32)
    (global.set $in (local.get $pointer))
    (global.set $end (i32.add (local.get $pointer) (local.get $len)))
    (local.set $start (global.get $heap))
    (global.set $out (local.get $start))
    (call $skip_whitespace)
    (if (i32.ne (call $peek) (i32.const 123)) (then unreachable)) ;; the state is a JSON object
    (call $object (i32.const 1))
    (call $skip_whitespace)
    (if (i32.ne (global.get $in) (global.get $end)) (then unreachable)) ;; nothing may follow it
    (global.set $heap (global.get $out))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $start)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (global.get $out) (local.get $start)))))

  (func (export "get_upgrade_info") (result i64)
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 81))))
