;; A hostile plugin, hand-written as a WebAssembly component in text form (wasmtime compiles WAT
;; directly, so it needs no toolchain): it answers every event with `route` to `copies` deliveries
;; (config `{"copies": N}` is not read; N is fixed below) whose payloads all point at the same 1 MiB
;; buffer. A host that copied each delivery's payload would allocate N MiB from a 2.5 MiB guest; the
;; gateway stops copying at `wasm.max_output_bytes` and fails the event with 422 `output`.
;;
;; The return value follows the canonical ABI's memory layout of `result<verdict, string>`:
;;   0: result tag (0 = ok)   4: verdict tag (2 = route)   8: list pointer   12: list length
;; and each `delivery` record is 28 bytes: endpoint (ptr, len), option tag at 8, payload (ptr, len)
;; at 12, headers (ptr, len) at 20.
(component
  (core module $m
    (memory (export "memory") 40)
    (data (i32.const 512) "a")
    ;; Deliveries to write, and where the shared payload lives.
    (global $copies i32 (i32.const 1000))
    (global $buffer i32 (i32.const 65536))
    (global $buffer_len i32 (i32.const 1048576))
    (global $list i32 (i32.const 1024))
    ;; A bump allocator above the buffer for what the host passes in.
    (global $bump (mut i32) (i32.const 1572864))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      ;; align the bump pointer up to `align` (param 2)
      (local.set $at
        (i32.and
          (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $at) (local.get 3)))
      (local.get $at))
    (func (export "handle")
      (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      (local $i i32)
      (local $entry i32)
      (block $done
        (loop $write
          (br_if $done (i32.ge_u (local.get $i) (global.get $copies)))
          (local.set $entry (i32.add (global.get $list) (i32.mul (local.get $i) (i32.const 28))))
          (i32.store (local.get $entry) (i32.const 512))
          (i32.store offset=4 (local.get $entry) (i32.const 1))
          (i32.store8 offset=8 (local.get $entry) (i32.const 1))
          (i32.store offset=12 (local.get $entry) (global.get $buffer))
          (i32.store offset=16 (local.get $entry) (global.get $buffer_len))
          (i32.store offset=20 (local.get $entry) (i32.const 0))
          (i32.store offset=24 (local.get $entry) (i32.const 0))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $write)))
      (i32.store8 (i32.const 0) (i32.const 0))
      (i32.store8 (i32.const 4) (i32.const 2))
      (i32.store (i32.const 8) (global.get $list))
      (i32.store (i32.const 12) (global.get $copies))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  ;; Records and variants in an export's signature must be exported types of their own.
  (type $header (tuple string string))
  (type $event-def (record
    (field "id" string)
    (field "source" string)
    (field "event-type" string)
    (field "headers" (list $header))
    (field "payload" (list u8))))
  (export $event "event" (type $event-def))
  (type $delivery-def (record
    (field "endpoint" string)
    (field "payload" (option (list u8)))
    (field "headers" (list $header))))
  (export $delivery "delivery" (type $delivery-def))
  (type $verdict-def (variant
    (case "drop" string)
    (case "pass" $event)
    (case "route" (list $delivery))))
  (export $verdict "verdict" (type $verdict-def))
  (type $handle (func (param "event" $event) (param "config" string) (result (result $verdict (error string)))))
  (func (export "handle") (type $handle)
    (canon lift (core func $i "handle") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))
