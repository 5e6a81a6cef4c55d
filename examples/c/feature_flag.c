/*
 * feature_flag.c: the spec's v1.2.0 migration in C, for the sandbox's plain ABI (ABI 2).
 *
 * Same result as the spec's Rust crate (examples/rust/upgrade_v1_2_0) and examples/wat/feature_flag.wat:
 *   - every object in global.nodes gets "new_feature_enabled": true;
 *   - global.version becomes "1.2.0"; like the Rust crate's `state["global"]["nodes"]` index, a global
 *     without "nodes" gets "nodes": null, and a missing or null "global" becomes
 *     {"nodes":null,"version":"1.2.0"}.
 *
 * Why it streams: no libc, no JSON library, no heap beyond a bump allocator. A recursive-descent pass
 * copies the input to the output and rewrites only what the migration changes; keys are compared by
 * their raw spelling, which is exact for the canonical JSON the node passes. Invalid input traps
 * (`__builtin_trap()` is wasm `unreachable`), like the Rust crate's `expect("Invalid JSON")`.
 *
 * ABI 2: exports `memory`, `alloc(len) -> ptr`, `upgrade(ptr, len) -> (ptr << 32) | len` and
 * `get_upgrade_info() -> (ptr << 32) | len`. No imports.
 *
 * Build (clang and lld from Debian; see README.md beside this file):
 *   clang --target=wasm32 -nostdlib -O2 -mbulk-memory -Wl,--no-entry -Wl,--stack-first \
 *     -Wl,-z,stack-size=1048576 -o feature_flag.wasm feature_flag.c
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

#define PAGE_SIZE 65536u
#define GROWTH_SLACK_PAGES 16u

extern u8 __heap_base; /* first byte after the data and the stack (wasm-ld) */

static u8 *heap_top;
static const u8 *in;   /* next input byte */
static const u8 *end;  /* one past the last input byte */
static u8 *out;        /* next output byte */

enum place { ELSEWHERE, ROOT, GLOBAL, NODES, NODE };
enum seen { SEEN_TARGET = 1, SEEN_NODES = 2 }; /* the member this object's migration sets; global.nodes */

static const char INFO[] = "{\"version\":\"1.2.0\",\"description\":\"Add new_feature_enabled flag\",\"breaking\":false}";

static u32 length_of(const char *text) {
    u32 n = 0;
    while (text[n]) n++;
    return n;
}

/* Make linear memory reach `limit`, or trap like an allocator that was refused memory. */
static void reserve(u8 *limit) {
    u64 have = (u64)__builtin_wasm_memory_size(0) * PAGE_SIZE;
    u64 want = (u64)(unsigned long)limit;
    if (want <= have) return;
    u32 pages = (u32)((want - have + PAGE_SIZE - 1) / PAGE_SIZE);
    if (__builtin_wasm_memory_grow(0, pages + GROWTH_SLACK_PAGES) == (unsigned long)-1 &&
        __builtin_wasm_memory_grow(0, pages) == (unsigned long)-1)
        __builtin_trap();
}

__attribute__((export_name("alloc"))) u8 *alloc(u32 len) {
    if (!heap_top) heap_top = &__heap_base;
    u8 *pointer = heap_top;
    heap_top += len;
    reserve(heap_top);
    return pointer;
}

static void emit(const void *source, u32 len) {
    reserve(out + len);
    __builtin_memcpy(out, source, len);
    out += len;
}

static void emit_byte(u8 byte) { emit(&byte, 1); }
static void emit_text(const char *text) { emit(text, length_of(text)); }

static int peek(void) { return in < end ? *in : -1; }

static void skip_whitespace(void) {
    while (in < end && (*in == ' ' || *in == '\t' || *in == '\n' || *in == '\r')) in++;
}

static void expect(int byte) {
    if (peek() != byte) __builtin_trap();
    in++;
}

/* Copy one string, quotes and escapes included; return its raw content through key/key_len. */
static void copy_string(const u8 **key, u32 *key_len) {
    const u8 *start = in;
    expect('"');
    for (;;) {
        int byte = peek();
        if (byte < 0) __builtin_trap();
        in++;
        if (byte == '"') break;
        if (byte == '\\') in++;
    }
    if (in > end) __builtin_trap();
    emit(start, (u32)(in - start));
    *key = start + 1;
    *key_len = (u32)(in - start) - 2;
}

static void copy_scalar(void) {
    const u8 *start = in;
    while (in < end && *in != ',' && *in != '}' && *in != ']' && *in > ' ') in++;
    if (in == start) __builtin_trap();
    emit(start, (u32)(in - start));
}

static int key_is(const u8 *key, u32 key_len, const char *name) {
    u32 i = 0;
    for (; i < key_len; i++)
        if (name[i] == 0 || key[i] != (u8)name[i]) return 0;
    return name[i] == 0;
}

static void value(enum place place);

/* Read a value but write `replacement` in its place. */
static void replace_value(const char *replacement) {
    u8 *mark = out;
    value(ELSEWHERE);
    out = mark;
    emit_text(replacement);
}

static void array(void) {
    expect('[');
    emit_byte('[');
    skip_whitespace();
    if (peek() != ']') {
        for (;;) {
            value(ELSEWHERE);
            skip_whitespace();
            if (peek() != ',') break;
            in++;
            emit_byte(',');
        }
    }
    expect(']');
    emit_byte(']');
}

static void object(enum place place);

/* One member's value; returns the `seen` bits it accounts for. */
static int member_value(enum place place, const u8 *key, u32 key_len) {
    if (place == ROOT && key_is(key, key_len, "global")) {
        skip_whitespace();
        if (peek() == '{') { object(GLOBAL); return SEEN_TARGET; }
        if (peek() != 'n') __builtin_trap(); /* like Rust: only null turns into an object */
        replace_value("{\"nodes\":null,\"version\":\"1.2.0\"}");
        return SEEN_TARGET;
    }
    if (place == GLOBAL && key_is(key, key_len, "nodes")) { value(NODES); return SEEN_NODES; }
    if (place == GLOBAL && key_is(key, key_len, "version")) { replace_value("\"1.2.0\""); return SEEN_TARGET; }
    if (place == NODES) { value(NODE); return 0; }
    if (place == NODE && key_is(key, key_len, "new_feature_enabled")) { replace_value("true"); return SEEN_TARGET; }
    value(ELSEWHERE);
    return 0;
}

static void append_missing(enum place place, u32 members, int seen) {
    const char *text = 0;
    if (place == GLOBAL && !(seen & SEEN_NODES)) {
        if (members++) emit_byte(',');
        emit_text("\"nodes\":null");
    }
    if (seen & SEEN_TARGET) return;
    if (place == ROOT) text = "\"global\":{\"nodes\":null,\"version\":\"1.2.0\"}";
    if (place == GLOBAL) text = "\"version\":\"1.2.0\"";
    if (place == NODE) text = "\"new_feature_enabled\":true";
    if (!text) return;
    if (members) emit_byte(',');
    emit_text(text);
}

static void object(enum place place) {
    u32 members = 0;
    int seen = 0;
    expect('{');
    emit_byte('{');
    skip_whitespace();
    if (peek() != '}') {
        for (;;) {
            const u8 *key;
            u32 key_len;
            skip_whitespace();
            if (members) emit_byte(',');
            copy_string(&key, &key_len);
            skip_whitespace();
            expect(':');
            emit_byte(':');
            members++;
            seen |= member_value(place, key, key_len);
            skip_whitespace();
            if (peek() != ',') break;
            in++;
        }
    }
    expect('}');
    append_missing(place, members, seen);
    emit_byte('}');
}

static void value(enum place place) {
    const u8 *ignored_key;
    u32 ignored_len;
    skip_whitespace();
    switch (peek()) {
    case '{': object(place); break;
    case '[': array(); break;
    case '"': copy_string(&ignored_key, &ignored_len); break;
    default: copy_scalar(); break;
    }
}

static u64 packed(const void *pointer, u32 len) {
    return ((u64)(unsigned long)pointer << 32) | len;
}

__attribute__((export_name("upgrade"))) u64 upgrade(const u8 *pointer, u32 len) {
    if (!heap_top) heap_top = &__heap_base;
    u8 *start = heap_top;
    in = pointer;
    end = pointer + len;
    out = start;
    skip_whitespace();
    if (peek() != '{') __builtin_trap(); /* the state is a JSON object */
    object(ROOT);
    skip_whitespace();
    if (in != end) __builtin_trap(); /* and nothing follows it */
    heap_top = out;
    return packed(start, (u32)(out - start));
}

__attribute__((export_name("get_upgrade_info"))) u64 get_upgrade_info(void) {
    return packed(INFO, sizeof(INFO) - 1);
}
