;; delete_members.wat: upgrade() ignores its input and returns a 1.2.0 state with no members at all.
;; The sandbox runs it (the output is a JSON object); the pipeline's invariant check must refuse it,
;; because removing members is a governance decision, never a side effect of a migration.
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "{\"global\":{\"version\":\"1.2.0\",\"nodes\":{}}}")
  ;; Room for an input of any size: grow past the first page, return its end (called once per run).
  (func (export "alloc") (param $len i32) (result i32)
    (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1))) (i32.const -1))
      (then unreachable))
    (i32.const 65536))
  (func (export "upgrade") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 41))))
