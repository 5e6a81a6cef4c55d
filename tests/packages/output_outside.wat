;; output_outside.wat: upgrade() claims its result is 100 bytes at 0xffff0000, far past its memory.
;; The host must not read outside linear memory: BadOutput.
(module
  (memory (export "memory") 1)
  ;; Room for an input of any size: grow past the first page, return its end (called once per run).
  (func (export "alloc") (param $len i32) (result i32)
    (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1))) (i32.const -1))
      (then unreachable))
    (i32.const 65536))
  (func (export "upgrade") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 0xffff0000) (i64.const 32)) (i64.const 100))))
