;; memory_bomb.wat: upgrade() grows linear memory 1 MiB at a time until memory.grow is refused (-1),
;; then traps with `unreachable`, as a guest allocator does. The sandbox reports MemoryExhausted.
(module
  (memory (export "memory") 1)
  ;; Room for an input of any size: grow past the first page, return its end (called once per run).
  (func (export "alloc") (param $len i32) (result i32)
    (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1))) (i32.const -1))
      (then unreachable))
    (i32.const 65536))
  (func (export "upgrade") (param i32 i32) (result i64)
    (loop $more
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
      (br $more))
    (i64.const 0)))
