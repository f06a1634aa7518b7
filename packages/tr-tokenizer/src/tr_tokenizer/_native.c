/* Compiled word segmenter for tr_tokenizer: the same algorithm as encoder.py, in C.
 *
 * encoder.py stays the reference and the fallback. This module takes the chunks that make up
 * nearly all real Turkish text (words of Turkish/ASCII letters with optional apostrophe
 * suffixes, and ASCII punctuation, digits and spaces) and returns exactly the ids the Python
 * encoder returns: the same tries (as dicts there), the same dynamic programs with the same
 * float arithmetic and tie order, the same decoder simulation for the round-trip check. For
 * any other chunk it returns None and the Python encoder runs. Tests compare both paths.
 *
 * The facts shared with the Python code (kind codes, case classes, letter classes, the order of
 * the suffix tables, ...) come from _native_layout.h, generated from the Python definitions by
 * _native_layout.py and checked by test_native_layout.py. The tables are passed by name, as the
 * attributes of one encoder.SegmenterTables.
 *
 * Built by hatch_build.py; if no C compiler is available, the package works without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_native_layout.h"

#define MAX_CHARS CONTEXT_CHARS    /* longer chunks go to Python (its shortcuts hold up to here) */
#define MAX_TOKENS (4 * MAX_CHARS + 2 * MAX_CHARS + 8)

/* suffixes.py element kinds, by name in SegmenterTables.elements (see element_kind) */
enum { E_LIT = 0, E_BUF, E_OPT, E_A, E_I, E_D, E_C };
/* decoder case states */
enum { S_NONE = 0, S_CAP_PENDING, S_UPPER_START, S_UPPER_CONT };

/* ---- characters --------------------------------------------------------------------- */

/* The letters this module handles: ASCII letters and the Turkish (and circumflex) letters,
 * each with its Turkish lowercase and uppercase. Anything else is left to Python. */
static const Py_UCS4 LOWER_EXTRA[] = {0xE7, 0x11F, 0x131, 0x69, 0xF6, 0x15F, 0xFC, 0xE2, 0xEE, 0xFB};
static const Py_UCS4 UPPER_EXTRA[] = {0xC7, 0x11E, 0x49, 0x130, 0xD6, 0x15E, 0xDC, 0xC2, 0xCE, 0xDB};
/* pairs: ç/Ç ğ/Ğ ı/I i/İ ö/Ö ş/Ş ü/Ü â/Â î/Î û/Û */

static int is_apostrophe(Py_UCS4 c) { return c == '\'' || c == 0x2019; }

/* Per code point below TABLE_CHARS (ASCII, Latin-1, Latin Extended-A: every handled letter):
 * its Turkish lowercase and uppercase, or 0 for a char that is not a handled letter; and its
 * letter classes in the suffix rules (F_* flags, from _native_layout.h). */
static Py_UCS4 LOW_OF[TABLE_CHARS], UP_OF[TABLE_CHARS];
enum { F_VOWEL = 1, F_BACK = 2, F_ROUNDED = 4, F_VOICELESS = 8 };
static uint8_t LETTER_CLASS[TABLE_CHARS];

#define MARK(chars, flag)                                                                        \
    for (size_t k = 0; k < sizeof(chars) / sizeof(chars[0]); k++)                               \
        LETTER_CLASS[chars[k]] |= (flag)

static void fill_letter_table(void)
{
    MARK(VOWEL_CHARS, F_VOWEL);
    MARK(BACK_VOWEL_CHARS, F_BACK);
    MARK(ROUNDED_VOWEL_CHARS, F_ROUNDED);
    MARK(VOICELESS_CHARS, F_VOICELESS);
    for (Py_UCS4 c = 'a'; c <= 'z'; c++) {
        LOW_OF[c] = c;
        UP_OF[c] = (c == 'i') ? 0x130 : c - 32;
        LOW_OF[c - 32] = (c == 'i') ? 0x131 : c; /* I -> ı */
        UP_OF[c - 32] = c - 32;
    }
    for (int k = 0; k < 10; k++) {
        if (LOWER_EXTRA[k] != 'i') { /* i and I are ASCII, done above */
            LOW_OF[LOWER_EXTRA[k]] = LOWER_EXTRA[k];
            UP_OF[LOWER_EXTRA[k]] = UPPER_EXTRA[k];
        }
        if (UPPER_EXTRA[k] != 'I') {
            LOW_OF[UPPER_EXTRA[k]] = LOWER_EXTRA[k];
            UP_OF[UPPER_EXTRA[k]] = UPPER_EXTRA[k];
        }
    }
}

/* Returns 1 and sets *low, *up, *is_up for a handled letter, else 0. */
static inline int letter_info(Py_UCS4 c, Py_UCS4 *low, Py_UCS4 *up, int *is_up)
{
    if (c >= TABLE_CHARS || LOW_OF[c] == 0)
        return 0;
    *low = LOW_OF[c];
    *up = UP_OF[c];
    *is_up = (c != *low);
    return 1;
}

/* The suffix rules' letter classes of a lowercase char (suffixes.VOWELS, ...). */
static inline int has_class(Py_UCS4 c, int flag) { return c < TABLE_CHARS && (LETTER_CLASS[c] & flag); }
static inline int is_vowel(Py_UCS4 c) { return has_class(c, F_VOWEL); }
static inline int is_back(Py_UCS4 c) { return has_class(c, F_BACK); }
static inline int is_rounded(Py_UCS4 c) { return has_class(c, F_ROUNDED); }
static inline int is_voiceless(Py_UCS4 c) { return has_class(c, F_VOICELESS); }

/* The rank of the last vowel's representative (encoder._harmony_class), 0 for none: with the
 * CLASS_* bases it gives the index of a context key's suffix table in encoder.HARMONY_KEYS. */
static int vowel_rank(Py_UCS4 v)
{
    if (v == 0)
        return 0;
    if (is_rounded(v))
        return is_back(v) ? RANK_BACK_ROUNDED : RANK_FRONT_ROUNDED;
    return is_back(v) ? RANK_BACK_UNROUNDED : RANK_FRONT_UNROUNDED;
}

/* ---- tries -------------------------------------------------------------------------- */

typedef struct {
    Py_UCS4 c;     /* the char that leads to this node from its parent */
    int32_t id;    /* NO_ID: only a proper prefix of some key */
    int32_t first; /* its children: nodes[first : first + count], sorted by char */
    int32_t count;
    double cost;
} Node;

/* Built with a hash table from (node, char) to child (trie_insert), then frozen (trie_freeze):
 * the nodes renumbered depth first, each node's children side by side and sorted by char, so
 * that a word's walk touches few cache lines, and the root's children in a table by char. */
typedef struct {
    Node *nodes;
    Py_ssize_t n_nodes, cap_nodes;
    uint64_t *keys;     /* open addressing: (parent << 21 | char) | 1 << 63; 0 = empty slot */
    int32_t *children;
    size_t mask;
    size_t used;
    int32_t root_child[TABLE_CHARS]; /* after trie_freeze */
} Trie;

static size_t slot_of(uint64_t key, size_t mask)
{
    key ^= key >> 31;
    key *= 0x9E3779B97F4A7C15ULL;
    key ^= key >> 29;
    return (size_t)key & mask;
}

/* The child of `node` by char c while the trie is built, or -1. */
static int32_t trie_find(const Trie *t, int32_t node, Py_UCS4 c)
{
    uint64_t key = ((uint64_t)node << 21 | c) | (1ULL << 63);
    size_t s = slot_of(key, t->mask);
    for (;;) {
        uint64_t k = t->keys[s];
        if (k == key)
            return t->children[s];
        if (k == 0)
            return -1;
        s = (s + 1) & t->mask;
    }
}

static int trie_grow_table(Trie *t)
{
    size_t old_size = t->mask + 1, new_size = old_size * 2;
    uint64_t *keys = PyMem_Calloc(new_size, sizeof(uint64_t));
    int32_t *children = PyMem_Malloc(new_size * sizeof(int32_t));
    if (!keys || !children) {
        PyMem_Free(keys);
        PyMem_Free(children);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t s = 0; s < old_size; s++) {
        if (t->keys[s]) {
            size_t d = slot_of(t->keys[s], new_size - 1);
            while (keys[d])
                d = (d + 1) & (new_size - 1);
            keys[d] = t->keys[s];
            children[d] = t->children[s];
        }
    }
    PyMem_Free(t->keys);
    PyMem_Free(t->children);
    t->keys = keys;
    t->children = children;
    t->mask = new_size - 1;
    return 0;
}

static int32_t trie_new_node(Trie *t)
{
    if (t->n_nodes == t->cap_nodes) {
        Py_ssize_t cap = t->cap_nodes ? 2 * t->cap_nodes : 64;
        Node *nodes = PyMem_Realloc(t->nodes, cap * sizeof(Node));
        if (!nodes) {
            PyErr_NoMemory();
            return -1;
        }
        t->nodes = nodes;
        t->cap_nodes = cap;
    }
    t->nodes[t->n_nodes].c = 0;
    t->nodes[t->n_nodes].id = NO_ID;
    t->nodes[t->n_nodes].first = t->nodes[t->n_nodes].count = 0;
    t->nodes[t->n_nodes].cost = 0.0;
    return (int32_t)t->n_nodes++;
}

static int trie_init(Trie *t)
{
    memset(t, 0, sizeof(*t));
    t->keys = PyMem_Calloc(64, sizeof(uint64_t));
    t->children = PyMem_Malloc(64 * sizeof(int32_t));
    if (!t->keys || !t->children) {
        PyErr_NoMemory();
        return -1;
    }
    t->mask = 63;
    return trie_new_node(t) < 0 ? -1 : 0;
}

static void trie_free(Trie *t)
{
    PyMem_Free(t->nodes);
    PyMem_Free(t->keys);
    PyMem_Free(t->children);
    memset(t, 0, sizeof(*t));
}

/* Renumber the nodes depth first with each node's children side by side, sorted by char, and
 * drop the hash table. */
static int trie_freeze(Trie *t)
{
    Py_ssize_t n = t->n_nodes;
    int32_t *first = PyMem_Calloc(n + 1, sizeof(int32_t)); /* children by old number */
    Py_UCS4 *edge_char = PyMem_Malloc((n + 1) * sizeof(Py_UCS4));
    int32_t *edge_node = PyMem_Malloc((n + 1) * sizeof(int32_t));
    int32_t *stack = PyMem_Malloc((n + 1) * 2 * sizeof(int32_t)); /* (old, new) pairs */
    Node *nodes = PyMem_Malloc((n + 1) * sizeof(Node));
    int ok = first && edge_char && edge_node && stack && nodes;
    if (ok) {
        for (size_t s = 0; s <= t->mask; s++) /* count, then sum up, the children per node */
            if (t->keys[s])
                first[((t->keys[s] & ~(1ULL << 63)) >> 21) + 1]++;
        for (Py_ssize_t i = 0; i < n; i++)
            first[i + 1] += first[i];
        for (Py_ssize_t i = 0; i < n; i++)
            t->nodes[i].count = 0; /* children placed so far */
        for (size_t s = 0; s <= t->mask; s++) {
            if (!t->keys[s])
                continue;
            int32_t parent = (int32_t)((t->keys[s] & ~(1ULL << 63)) >> 21);
            Py_UCS4 c = (Py_UCS4)(t->keys[s] & 0x1FFFFF);
            int32_t k = first[parent] + t->nodes[parent].count++;
            for (; k > first[parent] && edge_char[k - 1] > c; k--) { /* insertion sort */
                edge_char[k] = edge_char[k - 1];
                edge_node[k] = edge_node[k - 1];
            }
            edge_char[k] = c;
            edge_node[k] = t->children[s];
        }
        /* depth first: a node's children get the next free numbers when it is reached */
        nodes[0] = t->nodes[0];
        nodes[0].c = 0;
        int32_t next = 1, top = 0;
        stack[top++] = 0;
        stack[top++] = 0;
        while (top > 0) {
            int32_t new = stack[--top], old = stack[--top];
            int32_t count = t->nodes[old].count;
            nodes[new].first = next;
            nodes[new].count = count;
            for (int32_t k = count - 1; k >= 0; k--) { /* the first child is reached first */
                int32_t child = edge_node[first[old] + k];
                nodes[next + k] = t->nodes[child];
                nodes[next + k].c = edge_char[first[old] + k];
                stack[top++] = child;
                stack[top++] = next + k;
            }
            next += count;
        }
        for (Py_UCS4 c = 0; c < TABLE_CHARS; c++)
            t->root_child[c] = -1;
        for (int32_t k = nodes[0].first; k < nodes[0].first + nodes[0].count; k++)
            if (nodes[k].c < TABLE_CHARS)
                t->root_child[nodes[k].c] = k;
        PyMem_Free(t->nodes);
        t->nodes = nodes;
        t->cap_nodes = n + 1;
        nodes = NULL;
    }
    PyMem_Free(first);
    PyMem_Free(edge_char);
    PyMem_Free(edge_node);
    PyMem_Free(stack);
    PyMem_Free(nodes);
    PyMem_Free(t->keys);
    PyMem_Free(t->children);
    t->keys = NULL;
    t->children = NULL;
    if (!ok)
        PyErr_NoMemory();
    return ok ? 0 : -1;
}

/* The child of `node` by char c in a frozen trie, or -1. */
static inline int32_t trie_child(const Trie *t, int32_t node, Py_UCS4 c)
{
    if (node == 0 && c < TABLE_CHARS)
        return t->root_child[c];
    const Node *nodes = t->nodes;
    int32_t lo = nodes[node].first, end = lo + nodes[node].count, hi = end;
    while (hi - lo > 8) { /* the first child with a char >= c is in [lo, hi] */
        int32_t mid = (lo + hi) / 2;
        if (nodes[mid].c < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (hi < end)
        hi++; /* [lo, hi] may hold it */
    int32_t found = -1;
    for (; lo < hi; lo++) /* no early exit: a branch on each char is hard to predict */
        found = nodes[lo].c == c ? lo : found;
    return found;
}

/* Node for `text`, created along the way. */
static int32_t trie_insert(Trie *t, PyObject *text)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    int32_t node = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        int32_t child = trie_find(t, node, c);
        if (child < 0) {
            if ((t->used + 1) * 2 > t->mask + 1 && trie_grow_table(t) < 0)
                return -1;
            child = trie_new_node(t);
            if (child < 0)
                return -1;
            uint64_t key = ((uint64_t)node << 21 | c) | (1ULL << 63);
            size_t s = slot_of(key, t->mask);
            while (t->keys[s])
                s = (s + 1) & t->mask;
            t->keys[s] = key;
            t->children[s] = child;
            t->used++;
        }
        node = child;
    }
    return node;
}

/* Fill a trie from one of the encoder's lookup dicts. Scan tables map a text to its id (cost
 * costs[id]) or to -1 for a proper prefix; suffix tables map a spelling to (id, cost) or to ()
 * for a proper prefix. */
static int trie_from_dict(Trie *t, PyObject *dict, const double *costs, Py_ssize_t n_ids)
{
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        long id = NO_ID;
        double cost = 0.0;
        if (PyLong_Check(value)) {
            id = PyLong_AsLong(value);
            if (id >= 0 && id < n_ids)
                cost = costs[id];
        } else if (PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 2) {
            id = PyLong_AsLong(PyTuple_GET_ITEM(value, 0));
            cost = PyFloat_AsDouble(PyTuple_GET_ITEM(value, 1));
        } else if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 0) {
            PyErr_SetString(PyExc_TypeError, "lookup values must be an id, (id, cost) or ()");
            return -1;
        }
        if (PyErr_Occurred())
            return -1;
        if (!PyUnicode_Check(key) || id < NO_ID || id >= n_ids) {
            PyErr_Format(PyExc_ValueError, "bad lookup entry %R: %R", key, value);
            return -1;
        }
        int32_t node = trie_insert(t, key);
        if (node < 0)
            return -1;
        if (id != NO_ID) {
            t->nodes[node].id = (int32_t)id;
            t->nodes[node].cost = cost;
        }
    }
    return trie_freeze(t);
}

/* ---- the chunk cache (Tokenizer.encode_ids) ------------------------------------------ */

/* Text repeats its words, so each distinct chunk is segmented once and its tokens cached. The
 * cache lives here rather than in Python dicts: a hit then costs a hash over the chunk's chars
 * and one compare, with no str object, no tuples and no int objects per chunk. */

/* One cached chunk: its chars at keys[key : key + len], its ids at vals[val : val + n] and the
 * chars each id covers at vals[val + n : val + 2 * n]. */
typedef struct {
    Py_ssize_t key, len, val, n;
} CacheEntry;

/* Open addressing over `slots`, at most half full: a slot holds (hash << 32 | entry index + 1),
 * 0 when empty, so that most other chunks are told apart by the hash without reading their
 * entry. The arrays grow as needed; cache_clear frees them all. */
typedef struct {
    uint64_t *slots;
    size_t mask;
    CacheEntry *entries;
    Py_ssize_t n_entries, cap_entries;
    Py_UCS4 *keys;
    Py_ssize_t n_keys, cap_keys;
    int32_t *vals;
    Py_ssize_t n_vals, cap_vals;
} ChunkCache;

static void cache_clear(ChunkCache *c)
{
    PyMem_Free(c->slots);
    PyMem_Free(c->entries);
    PyMem_Free(c->keys);
    PyMem_Free(c->vals);
    memset(c, 0, sizeof(*c));
}

/* Room for `need` items of `size` bytes in *buf (capacity *cap, doubled as needed). */
static int grow(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    Py_ssize_t cap2 = *cap > 0 ? *cap : 256;
    while (cap2 < need)
        cap2 *= 2;
    void *p = (size_t)cap2 <= PY_SSIZE_T_MAX / size ? PyMem_Realloc(*buf, cap2 * size) : NULL;
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buf = p;
    *cap = cap2;
    return 0;
}

/* FNV-1a over the chars, then a final mix so that the low bits (the slot) depend on all. */
static uint32_t span_hash(const Py_UCS4 *s, Py_ssize_t n)
{
    uint64_t h = 0xCBF29CE484222325ULL;
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001B3ULL;
    h ^= h >> 32;
    h *= 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(h >> 32);
}

/* The entry of the chunk s[:n] with hash h, or NULL. */
static const CacheEntry *cache_find(const ChunkCache *c, const Py_UCS4 *s, Py_ssize_t n,
                                    uint32_t h)
{
    if (c->slots == NULL)
        return NULL;
    for (size_t i = h & c->mask;; i = (i + 1) & c->mask) {
        uint64_t slot = c->slots[i];
        if (slot == 0)
            return NULL;
        if ((uint32_t)(slot >> 32) == h) {
            const CacheEntry *e = &c->entries[(uint32_t)slot - 1];
            if (e->len == n && memcmp(c->keys + e->key, s, n * sizeof(Py_UCS4)) == 0)
                return e;
        }
    }
}

static void cache_place(ChunkCache *c, uint64_t slot)
{
    size_t i = (uint32_t)(slot >> 32) & c->mask;
    while (c->slots[i] != 0)
        i = (i + 1) & c->mask;
    c->slots[i] = slot;
}

/* Double the slots (or make the first 1024) and place the entries again. */
static int cache_grow_slots(ChunkCache *c)
{
    size_t size = c->slots ? 2 * (c->mask + 1) : 1024;
    uint64_t *old = c->slots;
    size_t old_size = old ? c->mask + 1 : 0;
    c->slots = PyMem_Calloc(size, sizeof(uint64_t));
    if (c->slots == NULL) {
        c->slots = old;
        PyErr_NoMemory();
        return -1;
    }
    c->mask = size - 1;
    for (size_t i = 0; i < old_size; i++)
        if (old[i] != 0)
            cache_place(c, old[i]);
    PyMem_Free(old);
    return 0;
}

/* Cache the tokens of the chunk s[:n] (hash h): n_ids ids and their char lengths. A cache
 * that holds `limit` chunks is cleared first (as _ChunkCache does in Python), which bounds
 * its memory on an endless stream of new words. Returns the new entry, or NULL (MemoryError). */
static const CacheEntry *cache_insert(ChunkCache *c, Py_ssize_t limit, const Py_UCS4 *s,
                                      Py_ssize_t n, uint32_t h, const int32_t *ids,
                                      const int32_t *lens, Py_ssize_t n_ids)
{
    if (c->n_entries >= limit || c->n_entries >= (Py_ssize_t)UINT32_MAX - 1)
        cache_clear(c);
    if (((c->n_entries + 1) * 2 > (Py_ssize_t)(c->mask + 1) || c->slots == NULL) &&
        cache_grow_slots(c) < 0)
        return NULL;
    if (grow((void **)&c->entries, &c->cap_entries, c->n_entries + 1, sizeof(CacheEntry)) < 0 ||
        grow((void **)&c->keys, &c->cap_keys, c->n_keys + n, sizeof(Py_UCS4)) < 0 ||
        grow((void **)&c->vals, &c->cap_vals, c->n_vals + 2 * n_ids, sizeof(int32_t)) < 0)
        return NULL;
    CacheEntry *e = &c->entries[c->n_entries];
    e->key = c->n_keys;
    e->len = n;
    e->val = c->n_vals;
    e->n = n_ids;
    memcpy(c->keys + c->n_keys, s, n * sizeof(Py_UCS4));
    memcpy(c->vals + c->n_vals, ids, n_ids * sizeof(int32_t));
    memcpy(c->vals + c->n_vals + n_ids, lens, n_ids * sizeof(int32_t));
    c->n_keys += n;
    c->n_vals += 2 * n_ids;
    c->n_entries++;
    cache_place(c, (uint64_t)h << 32 | (uint64_t)c->n_entries);
    return e;
}

/* ---- the segmenter object ----------------------------------------------------------- */

typedef struct {
    uint8_t kind;
    Py_UCS4 letter;
} Element;

typedef struct {
    PyObject_HEAD
    Trie roots, text, raw;
    Trie suffix[NUM_CLASSES];
    Py_ssize_t n_ids;
    double *costs;
    double byte_cost;       /* 1.0 + _TIE * _BYTE_PENALTY, computed by Python */
    double one_letter_cost; /* encoder.ONE_LETTER_START */
    uint8_t *kind;          /* decoder kind code per id */
    uint8_t *letters_only;
    uint8_t *spaced_word;
    uint8_t *whole_only;    /* a root-scan id a parse takes only as the whole word */
    Py_UCS4 *voiced;        /* voiced last letter of an alternating root, 0 otherwise */
    Py_ssize_t *text_start; /* text of id i: text_buf[text_start[i] : text_start[i + 1]] */
    Py_UCS4 *text_buf;
    Py_ssize_t *elem_start; /* elements of a shared suffix id, likewise */
    Element *elem_buf;
    int32_t cap_id, upper_id, byte0;
    int32_t glue_id[3];     /* glue markers by case class (LOWER, CAPITALIZED, UPPER); -1: none */
    PyObject **id_objects;  /* the int object of each id, made on first use (id_object) */
    ChunkCache cache;       /* chunk -> tokens, for encode_text and offsets */
} Segmenter;

static void Segmenter_dealloc(Segmenter *self)
{
    trie_free(&self->roots);
    trie_free(&self->text);
    trie_free(&self->raw);
    for (int k = 0; k < NUM_CLASSES; k++)
        trie_free(&self->suffix[k]);
    PyMem_Free(self->costs);
    PyMem_Free(self->kind);
    PyMem_Free(self->letters_only);
    PyMem_Free(self->spaced_word);
    PyMem_Free(self->whole_only);
    PyMem_Free(self->voiced);
    PyMem_Free(self->text_start);
    PyMem_Free(self->text_buf);
    PyMem_Free(self->elem_start);
    PyMem_Free(self->elem_buf);
    cache_clear(&self->cache);
    if (self->id_objects != NULL) {
        for (Py_ssize_t i = 0; i < self->n_ids; i++)
            Py_XDECREF(self->id_objects[i]);
        PyMem_Free(self->id_objects);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int element_kind(PyObject *name, uint8_t *out)
{
    static const char *names[] = {"lit", "buf", "opt", "A", "I", "D", "C"};
    for (int k = 0; k < 7; k++) {
        if (PyUnicode_CompareWithASCIIString(name, names[k]) == 0) {
            *out = (uint8_t)k;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown suffix element kind %R", name);
    return -1;
}

static Py_UCS4 single_char(PyObject *s)
{
    if (!PyUnicode_Check(s) || PyUnicode_GET_LENGTH(s) != 1) {
        PyErr_Format(PyExc_ValueError, "expected one character, got %R", s);
        return (Py_UCS4)-1;
    }
    return PyUnicode_READ_CHAR(s, 0);
}

/* ---- construction from encoder.SegmenterTables ------------------------------------------ */

/* The attributes of a SegmenterTables, read by name so that no table can be passed in the
 * wrong place; the objects are new references (tables_release). */
typedef struct {
    PyObject *root_scan, *text_scan, *raw_scan; /* dict: text -> id, or NO_ID for a prefix */
    PyObject *suffix_tables;                    /* list of NUM_CLASSES dicts (trie_from_dict) */
    PyObject *costs, *kinds, *texts, *elements, *voiced, *letters_only, *spaced_word,
        *whole_only; /* per id */
    double byte_cost, one_letter_cost;
    long cap_id, upper_id, byte0;
    long glue_id[3]; /* glue_id, glue_cap_id, glue_upper_id: -1 for a vocabulary without them */
} Tables;

static const struct {
    const char *name;
    int is_dict; /* else a list */
    size_t offset;
} TABLE_FIELDS[] = {
    {"root_scan", 1, offsetof(Tables, root_scan)},
    {"text_scan", 1, offsetof(Tables, text_scan)},
    {"raw_scan", 1, offsetof(Tables, raw_scan)},
    {"suffix_tables", 0, offsetof(Tables, suffix_tables)},
    {"costs", 0, offsetof(Tables, costs)},
    {"kinds", 0, offsetof(Tables, kinds)},
    {"texts", 0, offsetof(Tables, texts)},
    {"elements", 0, offsetof(Tables, elements)},
    {"voiced", 0, offsetof(Tables, voiced)},
    {"letters_only", 0, offsetof(Tables, letters_only)},
    {"spaced_word", 0, offsetof(Tables, spaced_word)},
    {"whole_only", 0, offsetof(Tables, whole_only)},
};
#define NUM_TABLE_FIELDS (sizeof(TABLE_FIELDS) / sizeof(TABLE_FIELDS[0]))

static PyObject **table_field(Tables *t, size_t k) { return (PyObject **)((char *)t + TABLE_FIELDS[k].offset); }

static void tables_release(Tables *t)
{
    for (size_t k = 0; k < NUM_TABLE_FIELDS; k++)
        Py_CLEAR(*table_field(t, k));
}

/* obj.<name> as a number: a double, or a long when `as_long` is given. */
static int number_field(PyObject *obj, const char *name, double *as_double, long *as_long)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (v == NULL)
        return -1;
    if (as_long != NULL)
        *as_long = PyLong_AsLong(v);
    else
        *as_double = PyFloat_AsDouble(v);
    Py_DECREF(v);
    if (PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "SegmenterTables.%s must be a number", name);
        return -1;
    }
    return 0;
}

/* Read every attribute of `obj`, checking the containers' types and lengths. */
static int tables_read(PyObject *obj, Tables *t)
{
    memset(t, 0, sizeof(*t));
    for (size_t k = 0; k < NUM_TABLE_FIELDS; k++) {
        PyObject *v = PyObject_GetAttrString(obj, TABLE_FIELDS[k].name);
        *table_field(t, k) = v;
        if (v == NULL)
            return -1;
        if (TABLE_FIELDS[k].is_dict ? !PyDict_Check(v) : !PyList_Check(v)) {
            PyErr_Format(PyExc_TypeError, "SegmenterTables.%s must be a %s, not %s",
                         TABLE_FIELDS[k].name, TABLE_FIELDS[k].is_dict ? "dict" : "list",
                         Py_TYPE(v)->tp_name);
            return -1;
        }
    }
    if (number_field(obj, "byte_cost", &t->byte_cost, NULL) < 0 ||
        number_field(obj, "one_letter_cost", &t->one_letter_cost, NULL) < 0 ||
        number_field(obj, "cap_id", NULL, &t->cap_id) < 0 ||
        number_field(obj, "upper_id", NULL, &t->upper_id) < 0 ||
        number_field(obj, "byte0", NULL, &t->byte0) < 0 ||
        number_field(obj, "glue_id", NULL, &t->glue_id[LOWER]) < 0 ||
        number_field(obj, "glue_cap_id", NULL, &t->glue_id[CAPITALIZED]) < 0 ||
        number_field(obj, "glue_upper_id", NULL, &t->glue_id[UPPER]) < 0)
        return -1;
    Py_ssize_t n = PyList_GET_SIZE(t->costs);
    for (size_t k = 0; k < NUM_TABLE_FIELDS; k++) {
        PyObject *v = *table_field(t, k);
        if (PyList_Check(v) && v != t->suffix_tables && PyList_GET_SIZE(v) != n) {
            PyErr_Format(PyExc_ValueError, "SegmenterTables.%s has %zd entries, costs %zd: the "
                         "per-id lists need one entry per id", TABLE_FIELDS[k].name,
                         PyList_GET_SIZE(v), n);
            return -1;
        }
    }
    if (PyList_GET_SIZE(t->suffix_tables) != NUM_CLASSES) {
        PyErr_Format(PyExc_ValueError, "expected %d suffix tables (encoder.HARMONY_KEYS)",
                     NUM_CLASSES);
        return -1;
    }
    if (t->cap_id < 0 || t->cap_id >= n || t->upper_id < 0 || t->upper_id >= n || t->byte0 < 0 ||
        t->byte0 + 256 > n) {
        PyErr_SetString(PyExc_ValueError, "special ids out of range");
        return -1;
    }
    for (int k = 0; k < 3; k++) {
        if (t->glue_id[k] < -1 || t->glue_id[k] >= n || (t->glue_id[k] < 0) != (t->glue_id[0] < 0)) {
            PyErr_SetString(PyExc_ValueError, "glue ids out of range (all -1, or all ids)");
            return -1;
        }
    }
    return 0;
}

/* Allocate the per-id arrays and the text and element buffers for `t`'s n ids. */
static int alloc_per_id(Segmenter *self, const Tables *t, Py_ssize_t n)
{
    Py_ssize_t text_total = 0, elem_total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *text = PyList_GET_ITEM(t->texts, i), *e = PyList_GET_ITEM(t->elements, i);
        if (!PyUnicode_Check(text) || !PyTuple_Check(e)) {
            PyErr_SetString(PyExc_TypeError, "texts must be str and elements tuples");
            return -1;
        }
        text_total += PyUnicode_GET_LENGTH(text);
        elem_total += PyTuple_GET_SIZE(e);
    }
    self->costs = PyMem_Malloc(n * sizeof(double));
    self->kind = PyMem_Malloc(n);
    self->letters_only = PyMem_Malloc(n);
    self->spaced_word = PyMem_Malloc(n);
    self->whole_only = PyMem_Malloc(n);
    self->voiced = PyMem_Malloc(n * sizeof(Py_UCS4));
    self->text_start = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t));
    self->elem_start = PyMem_Malloc((n + 1) * sizeof(Py_ssize_t));
    self->id_objects = PyMem_Calloc(n, sizeof(PyObject *));
    self->text_buf = PyMem_Malloc((text_total + 1) * sizeof(Py_UCS4));
    self->elem_buf = PyMem_Malloc((elem_total + 1) * sizeof(Element));
    if (!self->costs || !self->kind || !self->letters_only || !self->spaced_word || !self->whole_only ||
        !self->voiced || !self->text_start || !self->elem_start || !self->id_objects ||
        !self->text_buf || !self->elem_buf) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* Copy the suffix elements of one id (a tuple of (kind name, letter) pairs) to elem_buf. */
static int copy_elements(Segmenter *self, PyObject *e, Py_ssize_t *epos)
{
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(e); j++) {
        PyObject *pair = PyTuple_GET_ITEM(e, j);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "an element is a (kind, letter) tuple");
            return -1;
        }
        if (element_kind(PyTuple_GET_ITEM(pair, 0), &self->elem_buf[*epos].kind) < 0)
            return -1;
        Py_UCS4 c = single_char(PyTuple_GET_ITEM(pair, 1));
        if (c == (Py_UCS4)-1)
            return -1;
        self->elem_buf[(*epos)++].letter = c;
    }
    return 0;
}

/* Fill the per-id arrays and buffers from `t`. */
static int fill_per_id(Segmenter *self, const Tables *t, Py_ssize_t n)
{
    Py_ssize_t tpos = 0, epos = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        self->costs[i] = PyFloat_AsDouble(PyList_GET_ITEM(t->costs, i));
        long k = PyLong_AsLong(PyList_GET_ITEM(t->kinds, i));
        int lo = PyObject_IsTrue(PyList_GET_ITEM(t->letters_only, i));
        int sw = PyObject_IsTrue(PyList_GET_ITEM(t->spaced_word, i));
        int wo = PyObject_IsTrue(PyList_GET_ITEM(t->whole_only, i));
        if (PyErr_Occurred() || lo < 0 || sw < 0 || wo < 0)
            return -1;
        if (k < 0 || k >= NUM_KINDS) {
            PyErr_Format(PyExc_ValueError, "unknown kind code %ld", k);
            return -1;
        }
        self->kind[i] = (uint8_t)k;
        self->letters_only[i] = (uint8_t)lo;
        self->spaced_word[i] = (uint8_t)sw;
        self->whole_only[i] = (uint8_t)wo;
        PyObject *v = PyList_GET_ITEM(t->voiced, i);
        self->voiced[i] = v == Py_None ? 0 : single_char(v);
        if (self->voiced[i] == (Py_UCS4)-1)
            return -1;
        PyObject *text = PyList_GET_ITEM(t->texts, i);
        self->text_start[i] = tpos;
        for (Py_ssize_t j = 0; j < PyUnicode_GET_LENGTH(text); j++)
            self->text_buf[tpos++] = PyUnicode_READ_CHAR(text, j);
        self->elem_start[i] = epos;
        if (copy_elements(self, PyList_GET_ITEM(t->elements, i), &epos) < 0)
            return -1;
    }
    self->text_start[n] = tpos;
    self->elem_start[n] = epos;
    return 0;
}

/* Build the scan and suffix tries (after fill_per_id: scan entries cost costs[id]). */
static int build_tries(Segmenter *self, const Tables *t, Py_ssize_t n)
{
    if (trie_init(&self->roots) < 0 || trie_from_dict(&self->roots, t->root_scan, self->costs, n) < 0)
        return -1;
    if (trie_init(&self->text) < 0 || trie_from_dict(&self->text, t->text_scan, self->costs, n) < 0)
        return -1;
    if (trie_init(&self->raw) < 0 || trie_from_dict(&self->raw, t->raw_scan, self->costs, n) < 0)
        return -1;
    for (int c = 0; c < NUM_CLASSES; c++) {
        PyObject *table = PyList_GET_ITEM(t->suffix_tables, c);
        if (!PyDict_Check(table)) {
            PyErr_SetString(PyExc_TypeError, "suffix tables must be dicts");
            return -1;
        }
        if (trie_init(&self->suffix[c]) < 0 ||
            trie_from_dict(&self->suffix[c], table, self->costs, n) < 0)
            return -1;
    }
    return 0;
}

/* Segmenter(tables): tables is an encoder.SegmenterTables (any object with its attributes). */
static int Segmenter_init(Segmenter *self, PyObject *args, PyObject *kwds)
{
    PyObject *obj;
    static char *kwlist[] = {"tables", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Segmenter", kwlist, &obj))
        return -1;
    if (self->costs) {
        PyErr_SetString(PyExc_RuntimeError, "Segmenter is already initialized");
        return -1;
    }
    Tables t;
    int r = tables_read(obj, &t);
    if (r == 0) {
        Py_ssize_t n = PyList_GET_SIZE(t.costs);
        self->n_ids = n;
        self->byte_cost = t.byte_cost;
        self->one_letter_cost = t.one_letter_cost;
        self->cap_id = (int32_t)t.cap_id;
        self->upper_id = (int32_t)t.upper_id;
        self->byte0 = (int32_t)t.byte0;
        for (int k = 0; k < 3; k++)
            self->glue_id[k] = (int32_t)t.glue_id[k];
        r = alloc_per_id(self, &t, n);
        if (r == 0)
            r = fill_per_id(self, &t, n);
        if (r == 0)
            r = build_tries(self, &t, n);
    }
    tables_release(&t);
    return r;
}

/* ---- context keys (suffixes.context_keys) ------------------------------------------- */

/* Per handled letter (below TABLE_CHARS), what context_classes needs of its lowercase: the
 * vowel_rank of a vowel (0 for a consonant), the class base after a consonant. */
static uint8_t VOWEL_RANK_OF[TABLE_CHARS];
static uint8_t CONSONANT_CLASS[TABLE_CHARS];

static void fill_context_tables(void) /* after fill_letter_table */
{
    for (Py_UCS4 c = 0; c < TABLE_CHARS; c++) {
        Py_UCS4 low = LOW_OF[c];
        if (low == 0)
            continue;
        VOWEL_RANK_OF[c] = is_vowel(low) ? (uint8_t)vowel_rank(low) : 0;
        CONSONANT_CLASS[c] = is_voiceless(low) ? CLASS_AFTER_VOICELESS : CLASS_AFTER_CONSONANT;
    }
}

/* classes[i] = harmony class of the key of s[:i], for i in 0..n. Every char of s must be a
 * handled letter, an apostrophe or a space (checked by the caller). */
static void context_classes(const Py_UCS4 *s, Py_ssize_t n, int *classes)
{
    int key = CLASS_NO_WORD, rank = 0; /* rank: vowel_rank of the last vowel */
    classes[0] = CLASS_NO_WORD;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = s[i];
        if (c >= TABLE_CHARS || LOW_OF[c] == 0) {
            if (!is_apostrophe(c)) { /* the context looks through apostrophes */
                key = CLASS_NO_WORD;
                rank = 0;
            }
        } else if (VOWEL_RANK_OF[c] != 0) {
            rank = VOWEL_RANK_OF[c];
            key = CLASS_AFTER_VOWEL + rank - 1;
        } else {
            key = CONSONANT_CLASS[c] + rank;
        }
        classes[i + 1] = key;
    }
}

/* ---- segmentation (encoder._morph and encoder._cheapest) ---------------------------- */

typedef struct {
    int32_t id[MAX_TOKENS];
    int32_t len[MAX_TOKENS];
    int n;
} Path;

static int path_push(Path *p, int32_t id, int32_t len)
{
    if (p->n >= MAX_TOKENS)
        return -1;
    p->id[p->n] = id;
    p->len[p->n] = len;
    p->n++;
    return 0;
}

#define INF HUGE_VAL

/* encoder._one_letter_start: the end of the word's first letter when more of it follows. */
static Py_ssize_t one_letter_start(const Py_UCS4 *s, Py_ssize_t n)
{
    Py_ssize_t end = s[0] == ' ' ? 2 : 1;
    return n > end && !is_apostrophe(s[end - 1]) ? end : 0;
}

/* Inlined where the callers pass constants that drop work from the inner loop. */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* Relax the edges from i over every piece of trie t that spells s[i:j]; an edge ending at
 * `penalized` costs `penalty` more. */
static ALWAYS_INLINE void relax_edges(const Trie *t, const Py_UCS4 *s, Py_ssize_t n,
                                      Py_ssize_t i, double *cost, int32_t *back_i,
                                      int32_t *back_id, Py_ssize_t penalized, double penalty)
{
    double c0 = cost[i];
    int32_t node = 0;
    for (Py_ssize_t j = i + 1; j <= n; j++) {
        node = trie_child(t, node, s[j - 1]);
        if (node < 0)
            break;
        const Node *hit = &t->nodes[node];
        double c = c0 + hit->cost + (j == penalized ? penalty : 0.0);
        if (hit->id != NO_ID && c < cost[j]) {
            cost[j] = c;
            back_i[j] = (int32_t)i;
            back_id[j] = hit->id;
        }
    }
}

/* encoder._morph: best parse of s as one root followed only by suffix tokens.
 * Returns 1 with the path appended, 0 if there is none, -1 if the path overflowed. */
static int morph(const Segmenter *sg, const Py_UCS4 *s, Py_ssize_t n, Path *out)
{
    double cost[MAX_CHARS + 1];
    int32_t back_i[MAX_CHARS + 1], back_id[MAX_CHARS + 1];
    int classes[MAX_CHARS + 1];
    int32_t node = 0;
    Py_ssize_t first_letter = s[0] == ' ' ? 2 : 1; /* a root this long is one letter */
    if (n < 1 || n > MAX_CHARS) /* never (encode_span): tells the compiler cost[n] is set */
        return 0;
    for (Py_ssize_t j = 0; j <= n; j++)
        cost[j] = INF;
    for (Py_ssize_t j = 1; j <= n; j++) {
        node = trie_child(&sg->roots, node, s[j - 1]);
        if (node < 0)
            break;
        const Node *hit = &sg->roots.nodes[node];
        if (hit->id != NO_ID) {
            if (j == n) /* the whole word is one root: one token beats two or more */
                return path_push(out, hit->id, (int32_t)n) < 0 ? -1 : 1;
            if (j <= first_letter || sg->whole_only[hit->id])
                continue; /* no one-letter root before suffixes (encoder.ONE_LETTER_START), no
                             whole word either where the vocabulary says so */
            cost[j] = hit->cost;
            back_i[j] = 0;
            back_id[j] = hit->id;
        }
    }
    int have_classes = 0; /* computed once a root is found, as in Python */
    for (Py_ssize_t i = 1; i < n; i++) {
        if (cost[i] == INF)
            continue;
        if (!have_classes) {
            context_classes(s, n, classes);
            have_classes = 1;
        }
        relax_edges(&sg->suffix[classes[i]], s, n, i, cost, back_i, back_id, 0, 0.0);
    }
    if (!(cost[n] < INF))
        return 0;
    int32_t ids[MAX_CHARS + 1], lens[MAX_CHARS + 1];
    int k = 0;
    for (Py_ssize_t j = n; j > 0; j = back_i[j]) {
        ids[k] = back_id[j];
        lens[k] = (int32_t)(j - back_i[j]);
        k++;
    }
    while (k > 0) {
        k--;
        if (path_push(out, ids[k], lens[k]) < 0)
            return -1;
    }
    return 1;
}

static int utf8_bytes(Py_UCS4 c, uint8_t *b)
{
    if (c < 0x80) {
        b[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        b[0] = (uint8_t)(0xC0 | (c >> 6));
        b[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) { /* lone surrogates too, as "surrogatepass" writes them */
        b[0] = (uint8_t)(0xE0 | (c >> 12));
        b[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        b[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    b[0] = (uint8_t)(0xF0 | (c >> 18));
    b[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    b[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    b[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

/* encoder._cheapest: fewest-token segmentation of s[start:] (byte fallback included). With
 * `shared`, over all text pieces plus suffixes spelled from the left context; without, over
 * pieces whose text is fixed. Returns 0, or -1 if the path overflowed. */
static int cheapest(const Segmenter *sg, const Py_UCS4 *s, Py_ssize_t n, int shared,
                    Py_ssize_t start, Path *out)
{
    double cost[MAX_CHARS + 1];
    int32_t back_i[MAX_CHARS + 1], back_id[MAX_CHARS + 1];
    int classes[MAX_CHARS + 1];
    const Trie *scan = shared ? &sg->text : &sg->raw;
    for (Py_ssize_t j = 0; j <= n; j++)
        cost[j] = INF;
    cost[start] = 0.0;
    Py_ssize_t one_letter = shared ? one_letter_start(s, n) : 0;
    if (shared)
        context_classes(s, n, classes);
    for (Py_ssize_t i = start; i < n; i++) {
        double c0 = cost[i];
        if (c0 == INF)
            continue;
        relax_edges(scan, s, n, i, cost, back_i, back_id, i == 0 ? one_letter : 0,
                    sg->one_letter_cost);
        if (shared && i > 0)
            relax_edges(&sg->suffix[classes[i]], s, n, i, cost, back_i, back_id, 0, 0.0);
        uint8_t b[4];
        int nbytes = utf8_bytes(s[i], b);
        double c = c0 + nbytes * sg->byte_cost;
        if (c < cost[i + 1]) {
            cost[i + 1] = c;
            back_i[i + 1] = (int32_t)i;
            back_id[i + 1] = -1;
        }
    }
    /* trace back into a reversed list of (id, len), then append in order */
    int32_t ids[MAX_TOKENS], lens[MAX_TOKENS];
    int k = 0;
    for (Py_ssize_t j = n; j > start; j = back_i[j]) {
        Py_ssize_t i = back_i[j];
        if (back_id[j] == -1) {
            uint8_t b[4];
            int nb = utf8_bytes(s[i], b);
            for (int q = nb - 1; q >= 1; q--) {
                ids[k] = sg->byte0 + b[q];
                lens[k++] = 0;
            }
            ids[k] = sg->byte0 + b[0];
            lens[k++] = 1;
        } else {
            ids[k] = back_id[j];
            lens[k++] = (int32_t)(j - i);
        }
    }
    while (k > 0) {
        k--;
        if (path_push(out, ids[k], lens[k]) < 0)
            return -1;
    }
    return 0;
}

/* ---- decoding (decoder.DecodeState): Tokenizer.decode and the encoder's round-trip check -- */

/* One state machine serves both uses. To decode, it writes the text into a growing buffer. To
 * check (encoder._encode_word: does this path decode to the chunk?), it compares the text with
 * the chunk as it is written and stops at the first difference. The buffer is also the left
 * context that shared suffixes are spelled from (DecodeState.tail is its end). */

#define D_LEFT 1 /* a case this module leaves to Python (the caller runs decoder.py instead) */
#define D_DIFF 2 /* check: the text differs from the chunk */
#define CHECK_CHARS (2 * MAX_CHARS + 16)

typedef struct {
    const Segmenter *sg;
    Py_UCS4 *buf;          /* the text written so far */
    Py_ssize_t len, cap;
    Py_UCS4 inline_buf[CHECK_CHARS];
    const Py_UCS4 *want;   /* check: the text the ids must decode to; NULL to decode */
    Py_ssize_t want_len;
    int skip_special;
    int state;             /* case state (S_NONE ...) */
    int glue;              /* drop the next text piece's leading space (a glue marker came last) */
    int holding;           /* buf[held_at] is the plain last letter of an alternating root, to
                              be voiced if a vowel follows (DecodeState.held) */
    Py_ssize_t held_at;
    Py_UCS4 held_voiced;
    uint8_t utf8[4];       /* bytes of an incomplete UTF-8 character (DecodeState.utf8) */
    int n_utf8;
} Decoder;

static void decoder_init(Decoder *d, const Segmenter *sg, const Py_UCS4 *want, Py_ssize_t n,
                         int skip_special)
{
    d->sg = sg;
    d->buf = d->inline_buf;
    d->len = 0;
    d->cap = CHECK_CHARS;
    d->want = want;
    d->want_len = n;
    d->skip_special = skip_special;
    d->state = S_NONE;
    d->glue = 0;
    d->holding = 0;
    d->held_at = 0;
    d->held_voiced = 0;
    d->n_utf8 = 0;
}

static void decoder_free(Decoder *d)
{
    if (d->buf != d->inline_buf)
        PyMem_Free(d->buf);
    d->buf = d->inline_buf;
}

/* Room for `extra` more chars. A check never needs more than CHECK_CHARS: longer text differs
 * from the chunk anyway. Returns 0, D_DIFF or -1 (MemoryError). */
static int reserve(Decoder *d, Py_ssize_t extra)
{
    if (d->len + extra <= d->cap)
        return 0;
    if (d->want != NULL)
        return D_DIFF;
    Py_ssize_t cap = d->cap;
    while (cap < d->len + extra)
        cap *= 2;
    Py_UCS4 *buf = PyMem_Malloc(cap * sizeof(Py_UCS4));
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(buf, d->buf, d->len * sizeof(Py_UCS4));
    decoder_free(d);
    d->buf = buf;
    d->cap = cap;
    return 0;
}

/* The text in buf[a:b) is final: a check compares it with the chunk. */
static int commit(const Decoder *d, Py_ssize_t a, Py_ssize_t b)
{
    if (d->want == NULL)
        return 0;
    if (b > d->want_len)
        return D_DIFF;
    return memcmp(d->buf + a, d->want + a, (b - a) * sizeof(Py_UCS4)) == 0 ? 0 : D_DIFF;
}

static int put(Decoder *d, const Py_UCS4 *text, Py_ssize_t n)
{
    int r = reserve(d, n);
    if (r != 0)
        return r;
    memcpy(d->buf + d->len, text, n * sizeof(Py_UCS4));
    d->len += n;
    return commit(d, d->len - n, d->len);
}

/* DecodeState._release: write the held letter, voiced before a vowel. */
static int release(Decoder *d, int voiced)
{
    d->holding = 0;
    if (voiced)
        d->buf[d->held_at] = d->held_voiced;
    return commit(d, d->held_at, d->held_at + 1);
}

/* ---- UTF-8 byte tokens (the "tr_tokenizer" error handler of decoder.py) ----------------- */

/* The incremental decoder gets one byte at a time. A valid character is written once it is
 * complete, and so is a lone surrogate (ED A0..BF 80..BF): CPython waits for the third byte
 * of ED A0..BF, then the "surrogatepass" handler takes all three. Every other byte that does
 * not belong to a complete character becomes U+FFFD: the handler resumes one byte later. */

static int utf8_length(uint8_t lead) /* bytes of a character with this first byte, 0 if invalid */
{
    if (lead < 0x80)
        return 1;
    if (lead >= 0xC2 && lead <= 0xDF)
        return 2;
    if (lead >= 0xE0 && lead <= 0xEF)
        return 3;
    if (lead >= 0xF0 && lead <= 0xF4)
        return 4;
    return 0;
}

/* Whether b may follow seq[0:k] (k >= 1) in a valid character (no overlong forms or code
 * points above U+10FFFF) or a lone surrogate, as CPython's UTF-8 decoder checks it. */
static int utf8_continues(const uint8_t *seq, int k, uint8_t b)
{
    if (b < 0x80 || b > 0xBF)
        return 0;
    if (k > 1)
        return 1;
    switch (seq[0]) {
    case 0xE0: return b >= 0xA0;
    case 0xF0: return b >= 0x90;
    case 0xF4: return b <= 0x8F;
    }
    return 1;
}

static int put_replacements(Decoder *d, int n)
{
    static const Py_UCS4 fffd = 0xFFFD;
    for (int k = 0; k < n; k++) {
        int r = put(d, &fffd, 1);
        if (r != 0)
            return r;
    }
    return 0;
}

static int put_byte(Decoder *d, uint8_t b)
{
    if (d->n_utf8 > 0) {
        if (utf8_continues(d->utf8, d->n_utf8, b)) {
            d->utf8[d->n_utf8++] = b;
            int n = utf8_length(d->utf8[0]);
            if (d->n_utf8 < n)
                return 0;
            Py_UCS4 c = d->utf8[0] & (0xFF >> (n + 1));
            for (int k = 1; k < n; k++)
                c = c << 6 | (d->utf8[k] & 0x3F);
            d->n_utf8 = 0;
            return put(d, &c, 1);
        }
        int r = put_replacements(d, d->n_utf8); /* the handler resumes one byte later */
        d->n_utf8 = 0;
        if (r != 0)
            return r;
    }
    int n = utf8_length(b);
    if (n == 0)
        return put_replacements(d, 1);
    if (n > 1) {
        d->utf8[0] = b;
        d->n_utf8 = 1;
        return 0;
    }
    Py_UCS4 c = b;
    return put(d, &c, 1);
}

static int flush_bytes(Decoder *d) /* the end of a run of byte tokens: incomplete bytes */
{
    int n = d->n_utf8;
    d->n_utf8 = 0;
    return put_replacements(d, n);
}

/* The byte of a token named "<0xAB>", or -1. */
static int byte_value(const Segmenter *sg, int32_t id)
{
    const Py_UCS4 *t = sg->text_buf + sg->text_start[id];
    if (sg->text_start[id + 1] - sg->text_start[id] != 6)
        return -1;
    int v = 0;
    for (int k = 3; k < 5; k++) {
        Py_UCS4 c = t[k];
        int digit = (c >= '0' && c <= '9') ? (int)(c - '0')
                    : (c >= 'A' && c <= 'F') ? (int)(c - 'A' + 10)
                    : (c >= 'a' && c <= 'f') ? (int)(c - 'a' + 10) : -1;
        if (digit < 0)
            return -1;
        v = v * 16 + digit;
    }
    return v;
}

/* ---- letters and case in decoded text ---------------------------------------------------- */

/* suffixes.left_context over the text written so far: (last letter, last vowel), lowercased;
 * 0 for None. Letters outside the table are lowercased by Py_UNICODE_TOLOWER, which agrees
 * with str.lower() on whether the result is a Turkish vowel or voiceless consonant. */
static void left_context(const Decoder *d, Py_UCS4 *last, Py_UCS4 *vowel)
{
    *last = 0;
    *vowel = 0;
    Py_ssize_t stop = d->len > MAX_CHARS ? d->len - MAX_CHARS : 0;
    for (Py_ssize_t k = d->len - 1; k >= stop; k--) {
        Py_UCS4 c = d->buf[k], low, up;
        int is_up;
        if (is_apostrophe(c))
            continue;
        if (!letter_info(c, &low, &up, &is_up)) {
            if (c < 0x80 || !(Py_UNICODE_ISALPHA(c) || (c >= 0x300 && c <= 0x36F)))
                return; /* suffixes._is_letter: no letter, the word ends here */
            low = Py_UNICODE_TOLOWER(c);
        }
        if (*last == 0)
            *last = low;
        if (is_vowel(low)) {
            *vowel = low;
            return;
        }
    }
}

/* casing.tr_upper of buf[a:b): table letters in place, other chars (outside ASCII) through
 * str.upper, which may lengthen them; the text after b moves along. A check leaves those to
 * Python. Returns 0, D_LEFT or -1. */
static int upper_range(Decoder *d, Py_ssize_t a, Py_ssize_t b)
{
    int simple = 1;
    for (Py_ssize_t k = a; k < b; k++) {
        Py_UCS4 c = d->buf[k];
        if (c < TABLE_CHARS && LOW_OF[c] != 0)
            d->buf[k] = UP_OF[c];
        else if (c >= 0x80)
            simple = 0;
    }
    if (simple)
        return 0;
    if (d->want != NULL)
        return D_LEFT;
    PyObject *s = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, d->buf + a, b - a);
    PyObject *up = s ? PyObject_CallMethod(s, "upper", NULL) : NULL;
    Py_XDECREF(s);
    if (up == NULL)
        return -1;
    Py_ssize_t m = PyUnicode_GET_LENGTH(up), grow = m - (b - a);
    int r = grow > 0 ? reserve(d, grow) : 0;
    if (r == 0) {
        memmove(d->buf + b + grow, d->buf + b, (d->len - b) * sizeof(Py_UCS4));
        for (Py_ssize_t k = 0; k < m; k++)
            d->buf[a + k] = PyUnicode_READ_CHAR(up, k);
        d->len += grow;
    }
    Py_DECREF(up);
    return r;
}

/* The case markers' effect on the piece just written at buf[start:] (DecodeState.step). */
static int apply_case(Decoder *d, int32_t id, Py_ssize_t start)
{
    const Segmenter *sg = d->sg;
    if (d->state == S_CAP_PENDING) { /* casing.tr_capitalize */
        d->state = S_NONE;
        Py_ssize_t j = (d->len > start && d->buf[start] == ' ') ? start + 1 : start;
        return j < d->len ? upper_range(d, j, j + 1) : 0;
    }
    if (sg->letters_only[id] || (d->state == S_UPPER_START && sg->spaced_word[id])) {
        d->state = S_UPPER_CONT;
        return upper_range(d, start, d->len);
    }
    d->state = S_NONE;
    return 0;
}

/* Whether tr_lower(c)[:1] is a vowel: no char outside the table lowercases to one. */
static int lowers_to_vowel(Py_UCS4 c)
{
    return c < TABLE_CHARS && LOW_OF[c] != 0 && is_vowel(LOW_OF[c]);
}

static Py_UCS4 harmony(int kind, Py_UCS4 vowel)
{
    int back = is_back(vowel), rounded = is_rounded(vowel);
    if (kind == E_A)
        return back ? 'a' : 'e';
    if (back)
        return rounded ? 'u' : 0x131;
    return rounded ? 0xFC : 'i';
}

/* suffixes.realize; returns the length written, or -1 for None. */
static Py_ssize_t realize(const Element *el, Py_ssize_t n_el, Py_UCS4 last, Py_UCS4 vowel,
                          Py_UCS4 *out)
{
    if (last == 0)
        return -1;
    Py_ssize_t n = 0;
    for (Py_ssize_t k = 0; k < n_el; k++) {
        int after_vowel = is_vowel(last);
        Py_UCS4 letter;
        switch (el[k].kind) {
        case E_LIT:
            letter = el[k].letter;
            break;
        case E_BUF:
            if (!after_vowel)
                continue;
            letter = el[k].letter;
            break;
        case E_A:
        case E_I:
        case E_OPT:
            if (vowel == 0)
                return -1;
            if (el[k].kind == E_OPT && after_vowel)
                continue;
            letter = harmony(el[k].kind == E_OPT ? (el[k].letter == 'A' ? E_A : E_I) : el[k].kind,
                             vowel);
            break;
        case E_D:
            letter = is_voiceless(last) ? 't' : 'd';
            break;
        default: /* E_C */
            letter = is_voiceless(last) ? 0xE7 : 'c';
        }
        out[n++] = letter;
        last = letter;
        if (is_vowel(letter))
            vowel = letter;
    }
    return n;
}

/* Append the piece of a text or shared-suffix id, uncased and not yet committed. */
static int write_piece(Decoder *d, int32_t id, int kind)
{
    const Segmenter *sg = d->sg;
    if (kind == K_SHARED) {
        const Element *el = sg->elem_buf + sg->elem_start[id];
        Py_ssize_t n_el = sg->elem_start[id + 1] - sg->elem_start[id];
        Py_UCS4 last, vowel;
        int r = reserve(d, n_el);
        if (r != 0)
            return r;
        left_context(d, &last, &vowel);
        Py_ssize_t len = realize(el, n_el, last, vowel, d->buf + d->len);
        if (len < 0) /* no word to the left (only for ids not made by encode) */
            len = realize(el, n_el, 'a', 'a', d->buf + d->len);
        d->len += len > 0 ? len : 0;
        return 0;
    }
    const Py_UCS4 *text = sg->text_buf + sg->text_start[id];
    Py_ssize_t len = sg->text_start[id + 1] - sg->text_start[id];
    if (d->glue && len > 0 && text[0] == ' ') {
        text++;
        len--;
    }
    int r = reserve(d, len);
    if (r != 0)
        return r;
    memcpy(d->buf + d->len, text, len * sizeof(Py_UCS4));
    d->len += len;
    return 0;
}

/* DecodeState.step for a text or shared-suffix id. */
static int put_piece(Decoder *d, int32_t id, int kind)
{
    const Segmenter *sg = d->sg;
    Py_ssize_t start = d->len;
    int r = write_piece(d, id, kind);
    d->glue = 0;
    if (r == 0 && d->state != S_NONE)
        r = apply_case(d, id, start);
    if (r == 0 && d->holding)
        r = release(d, d->len > start && lowers_to_vowel(d->buf[start]));
    if (r != 0)
        return r;
    Py_UCS4 voiced = sg->voiced[id];
    if (voiced == 0 || d->len - start <= 1)
        return commit(d, start, d->len);
    Py_UCS4 plain = d->buf[d->len - 1], low, up, v_low, v_up;
    int is_up, v_is_up;
    if (!letter_info(plain, &low, &up, &is_up) || !letter_info(voiced, &v_low, &v_up, &v_is_up))
        return D_LEFT;
    d->held_voiced = is_up ? v_up : voiced;
    d->holding = 1;
    d->held_at = d->len - 1;
    return commit(d, start, d->len - 1);
}

/* DecodeState.step. Returns 0, D_LEFT, D_DIFF or -1 (a Python error). */
static int decode_step(Decoder *d, int32_t id)
{
    const Segmenter *sg = d->sg;
    int kind = sg->kind[id], r;
    if (d->holding && kind != K_TEXT && kind != K_SHARED && (r = release(d, 0)) != 0)
        return r;
    if (kind == K_BYTE) {
        int b = byte_value(sg, id);
        d->state = S_NONE;
        d->glue = 0;
        return b < 0 ? D_LEFT : put_byte(d, (uint8_t)b);
    }
    if (d->n_utf8 > 0 && (r = flush_bytes(d)) != 0)
        return r;
    switch (kind) {
    case K_CAP:
    case K_UPPER:
    case K_GLUE:
        d->state = kind == K_CAP ? S_CAP_PENDING : kind == K_UPPER ? S_UPPER_START : S_NONE;
        d->glue = id == sg->glue_id[LOWER] || id == sg->glue_id[CAPITALIZED] ||
                  id == sg->glue_id[UPPER];
        return 0;
    case K_SPECIAL:
        d->state = S_NONE;
        d->glue = 0;
        if (d->skip_special)
            return 0;
        return put(d, sg->text_buf + sg->text_start[id], sg->text_start[id + 1] - sg->text_start[id]);
    }
    return put_piece(d, id, kind);
}

/* DecodeState.flush. */
static int decode_flush(Decoder *d)
{
    int r = d->holding ? release(d, 0) : 0;
    if (r == 0 && d->n_utf8 > 0)
        r = flush_bytes(d);
    return r;
}

/* decode(path) == want, as encoder._decode(path) == chunk. Returns 1 (equal), 0 (differs) or
 * -1 (a case left to Python). Text is compared as it is written, so a difference ends the
 * check early. */
static int decodes_to(const Segmenter *sg, const Path *p, const Py_UCS4 *want, Py_ssize_t n)
{
    Decoder d;
    decoder_init(&d, sg, want, n, 0);
    int r = 0;
    for (int t = 0; t < p->n && r == 0; t++)
        r = decode_step(&d, p->id[t]);
    if (r == 0)
        r = decode_flush(&d);
    decoder_free(&d);
    if (r == D_LEFT || r < 0) /* a check sets no Python error (reserve never allocates) */
        return -1;
    return r == 0 && d.len == n;
}

/* ---- chunks (encoder.ChunkEncoder.encode_chunk) -------------------------------------- */

/* casing.case_class for a word of handled letters, apostrophes and an optional leading space;
 * writes its Turkish lowercase to `low`. */
static int case_class(const Py_UCS4 *w, Py_ssize_t n, Py_UCS4 *low)
{
    int n_upper = 0, n_letters = 0, first_upper = 0, seen_letter = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 l, u;
        int is_up;
        if (letter_info(w[i], &l, &u, &is_up)) {
            low[i] = l;
            if (is_up) {
                n_upper++;
                if (!seen_letter && i == (w[0] == ' ' ? 1 : 0))
                    first_upper = 1;
            }
            n_letters++;
            seen_letter = 1;
        } else {
            low[i] = w[i];
        }
    }
    if (n_upper == 0)
        return LOWER;
    if (n_upper == 1 && first_upper)
        return CAPITALIZED;
    Py_ssize_t stripped = n - (w[0] == ' ' ? 1 : 0);
    if (n_upper == n_letters && stripped > 1)
        return UPPER;
    return MIXED;
}

static int with_marker(const Segmenter *sg, int cls, Path *p)
{
    if (cls == CAPITALIZED)
        return path_push(p, sg->cap_id, 0);
    if (cls == UPPER)
        return path_push(p, sg->upper_id, 0);
    return 0;
}

static double path_cost(const Segmenter *sg, const Path *p)
{
    double total = 0.0; /* summed in order, as encoder._path_cost */
    for (int k = 0; k < p->n; k++)
        total += sg->costs[p->id[k]];
    return total;
}

/* encoder._glued: the word `low` (n chars, case class cls, no leading space) parsed with a
 * spaced root after the glue marker of its class, into out, when it costs no more than
 * `plain` (its parse with an unspaced root and case marker, or NULL). Returns 1 (out holds
 * the glued path), 0 (none, or costlier), -1 (overflow, or too long: left to Python). */
static int glued(const Segmenter *sg, int cls, const Py_UCS4 *low, Py_ssize_t n,
                 const Path *plain, Path *out)
{
    if (sg->glue_id[0] < 0 || low[0] == ' ')
        return 0;
    if (n + 1 > MAX_CHARS)
        return -1;
    Py_UCS4 spaced[MAX_CHARS];
    spaced[0] = ' ';
    memcpy(spaced + 1, low, n * sizeof(Py_UCS4));
    out->n = 0;
    if (path_push(out, sg->glue_id[cls], 0) < 0)
        return -1;
    int found = morph(sg, spaced, n + 1, out);
    if (found <= 0)
        return found;
    out->len[1] -= 1; /* the root's space is not in the word */
    return plain == NULL || path_cost(sg, out) <= path_cost(sg, plain);
}

/* encoder._encode_runs: the letter runs between apostrophes, each with its own case.
 * Returns 0, or -1 on overflow. */
static int encode_runs(const Segmenter *sg, const Py_UCS4 *w, Py_ssize_t n, Path *out)
{
    Py_UCS4 context[MAX_CHARS], low[MAX_CHARS];
    Py_ssize_t n_context = 0;
    Py_ssize_t a = 0;
    while (a < n) {
        Py_ssize_t b = a + 1;
        if (!is_apostrophe(w[a])) {
            while (b < n && !is_apostrophe(w[b]))
                b++;
        }
        Py_ssize_t len = b - a;
        int cls = case_class(w + a, len, low);
        if (is_apostrophe(w[a]) || cls == MIXED) {
            if (cheapest(sg, w + a, len, 0, 0, out) < 0)
                return -1;
            memcpy(context + n_context, low, len * sizeof(Py_UCS4));
            n_context += len;
        } else {
            memcpy(context + n_context, low, len * sizeof(Py_UCS4));
            if (with_marker(sg, cls, out) < 0)
                return -1;
            int found = 0;
            if (n_context == 0) { /* out held nothing before this run's marker */
                Path g;
                found = morph(sg, low, len, out);
                int gl = found < 0 ? -1 : glued(sg, cls, low, len, found ? out : NULL, &g);
                if (gl < 0)
                    return -1;
                if (gl) {
                    *out = g;
                    found = 1;
                }
            }
            if (!found && cheapest(sg, context, n_context + len, 1, n_context, out) < 0)
                return -1;
            n_context += len;
        }
        a = b;
    }
    return 0;
}

/* encoder.ChunkEncoder._encode_word. Returns 1 (path found), 0 (no word parse: the caller
 * takes the raw segmentation), -1 (overflow or a case left to Python). */
static int encode_word(const Segmenter *sg, const Py_UCS4 *w, Py_ssize_t n, Path *out)
{
    Py_UCS4 low[MAX_CHARS];
    int cls = case_class(w, n, low);
    int has_apostrophe = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        has_apostrophe |= is_apostrophe(w[i]);
    if (cls != MIXED) {
        out->n = 0;
        if (with_marker(sg, cls, out) < 0)
            return -1;
        int found = morph(sg, low, n, out);
        if (found < 0)
            return -1;
        Path g;
        int gl = glued(sg, cls, low, n, found ? out : NULL, &g);
        if (gl < 0)
            return -1;
        if (gl) {
            int ok = decodes_to(sg, &g, w, n);
            if (ok != 0) {
                *out = g;
                return ok;
            }
        }
        if (found && cls == LOWER && sg->voiced[out->id[0]] == 0)
            return 1; /* decodes to `low` by construction (encoder._parse_needs_no_check) */
        if (!found && cheapest(sg, low, n, 1, 0, out) < 0)
            return -1;
        int ok = decodes_to(sg, out, w, n); /* byte tokens: -1, left to Python */
        if (ok != 0)
            return ok;
    }
    if (has_apostrophe) {
        out->n = 0;
        if (encode_runs(sg, w, n, out) < 0)
            return -1;
        return decodes_to(sg, out, w, n);
    }
    return 0;
}

/* What kind of chunk this module can encode: 1 word-shaped (encoder.pretokenize.WORD) over
 * handled letters; 2 ASCII without letters and 3 handled letters and apostrophes that are no
 * word (both take the raw segmentation, as in Python); 0 anything else (left to Python). */
static int chunk_shape(const Py_UCS4 *w, Py_ssize_t n)
{
    int letters = 1, ascii_no_letters = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = w[i], l, u;
        int is_up;
        int is_letter = letter_info(c, &l, &u, &is_up);
        if (c >= 0x80 || is_letter)
            ascii_no_letters = 0;
        if (!is_letter && !is_apostrophe(c) && !(i == 0 && c == ' '))
            letters = 0;
    }
    if (ascii_no_letters)
        return 2;
    if (!letters)
        return 0;
    /* " ?L+(?:['’]L+)*": a letter first, no apostrophe last or twice in a row */
    Py_ssize_t i = (w[0] == ' ') ? 1 : 0;
    if (i >= n || is_apostrophe(w[i]) || is_apostrophe(w[n - 1]))
        return 3; /* letters and apostrophes, but not a word: raw segmentation */
    for (; i + 1 < n; i++)
        if (is_apostrophe(w[i]) && is_apostrophe(w[i + 1]))
            return 3;
    return 1;
}

/* Encode the chunk w[:n] into out; 1 done, 0 left to Python. */
static int encode_span(const Segmenter *sg, const Py_UCS4 *w, Py_ssize_t n, Path *out)
{
    if (n == 0 || n > MAX_CHARS)
        return 0;
    int shape = chunk_shape(w, n);
    if (shape == 0)
        return 0;
    out->n = 0;
    if (shape == 1) {
        int found = encode_word(sg, w, n, out);
        if (found < 0)
            return 0;
        if (found)
            return 1;
    }
    out->n = 0;
    return cheapest(sg, w, n, 0, 0, out) < 0 ? 0 : 1;
}

/* ---- pre-tokenization (pretokenize.PATTERN) ------------------------------------------ */

/* PATTERN's classes as `re` defines them for str patterns: \s is Py_UNICODE_ISSPACE, \d
 * Py_UNICODE_ISDECIMAL, \w alphanumeric or "_"; a letter ([^\W\d_]) is alphanumeric and no
 * decimal digit. For chars below TABLE_CHARS (nearly all Turkish text) RE_CLASS holds them,
 * computed by the same calls, so the split reads a table instead of Unicode lookups. */
enum { RE_LETTER = 1, RE_DIGIT = 2, RE_SYMBOL = 4, RE_SPACE = 8 };
static uint8_t RE_CLASS[TABLE_CHARS];

static int re_class(Py_UCS4 c) /* after fill_letter_table */
{
    int letter = (c < TABLE_CHARS && LOW_OF[c] != 0) ||
                 (c >= 0x80 && Py_UNICODE_ISALNUM(c) && !Py_UNICODE_ISDECIMAL(c));
    int digit = c < 0x80 ? (c >= '0' && c <= '9') : Py_UNICODE_ISDECIMAL(c);
    int symbol = c == '_' || !(Py_UNICODE_ISALNUM(c) || Py_UNICODE_ISSPACE(c));
    return (letter ? RE_LETTER : 0) | (digit ? RE_DIGIT : 0) | (symbol ? RE_SYMBOL : 0) |
           (Py_UNICODE_ISSPACE(c) ? RE_SPACE : 0);
}

static void fill_re_table(void)
{
    for (Py_UCS4 c = 0; c < TABLE_CHARS; c++)
        RE_CLASS[c] = (uint8_t)re_class(c);
}

static inline int re_is(Py_UCS4 c, int flag) { return (c < TABLE_CHARS ? RE_CLASS[c] : re_class(c)) & flag; }
static inline int re_letter(Py_UCS4 c) { return re_is(c, RE_LETTER); }
static inline int re_digit(Py_UCS4 c) { return re_is(c, RE_DIGIT); }
static inline int re_symbol(Py_UCS4 c) { return re_is(c, RE_SYMBOL); } /* [^\s\w]|_ */

/* The end of the chunk of s[:n] that starts at i: the alternatives of PATTERN in order. */
static Py_ssize_t chunk_end(const Py_UCS4 *s, Py_ssize_t n, Py_ssize_t i)
{
    int space = s[i] == ' ' && i + 1 < n; /* " ?": the space joins what follows it */
    Py_ssize_t j = space && re_letter(s[i + 1]) ? i + 1 : i;
    if (re_letter(s[j])) { /* a word with its apostrophe suffixes */
        for (;;) {
            while (j < n && re_letter(s[j]))
                j++;
            if (!(j + 1 < n && is_apostrophe(s[j]) && re_letter(s[j + 1])))
                return j;
            j++;
        }
    }
    j = space && re_digit(s[i + 1]) ? i + 1 : i;
    if (re_digit(s[j])) { /* up to three digits */
        Py_ssize_t k = j + 1;
        while (k < n && k < j + 3 && re_digit(s[k]))
            k++;
        return k;
    }
    if (is_apostrophe(s[i]) && i + 1 < n && re_letter(s[i + 1])) { /* a suffix after no word */
        j = i + 1;
        while (j < n && re_letter(s[j]))
            j++;
        return j;
    }
    j = space && re_symbol(s[i + 1]) ? i + 1 : i;
    if (re_symbol(s[j])) {
        while (j < n && re_symbol(s[j]))
            j++;
        return j;
    }
    for (j = i; j < n && re_is(s[j], RE_SPACE);) /* whitespace: s[i] is some */
        j++;
    if (j == n || j - i == 1)
        return j;
    return j - 1; /* leaving one space for the next word */
}

/* The text's chars as UCS4: a borrowed pointer for UCS4 text, else a copy in *owned (freed by
 * the caller). NULL with MemoryError. */
static const Py_UCS4 *text_chars(PyObject *text, Py_UCS4 **owned)
{
    *owned = NULL;
    if (PyUnicode_KIND(text) == PyUnicode_4BYTE_KIND)
        return PyUnicode_4BYTE_DATA(text);
    *owned = PyUnicode_AsUCS4Copy(text);
    return *owned;
}

/* split(text) -> list of chunks, as pretokenize.PATTERN.findall(text). */
static PyObject *native_split(PyObject *module, PyObject *text)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "split expects str, got %s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    Py_UCS4 *owned;
    const Py_UCS4 *s = text_chars(text, &owned);
    PyObject *chunks = s ? PyList_New(0) : NULL;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0, j; chunks != NULL && i < n; i = j) {
        j = chunk_end(s, n, i);
        PyObject *chunk = PyUnicode_Substring(text, i, j);
        if (chunk == NULL || PyList_Append(chunks, chunk) < 0)
            Py_CLEAR(chunks);
        Py_XDECREF(chunk);
    }
    PyMem_Free(owned);
    return chunks;
}

/* ---- encoding through the chunk cache (Tokenizer.encode_ids) -------------------------- */

/* The int object of an id, made once per Segmenter (borrowed). */
static PyObject *id_object(Segmenter *self, int32_t id)
{
    if (self->id_objects[id] == NULL)
        self->id_objects[id] = PyLong_FromLong(id);
    return self->id_objects[id];
}

/* The path's ids and lengths as tuples, untracked by the garbage collector as CPython itself
 * would untrack them at its first collection (they hold no containers). */
static int path_to_tuples(Segmenter *self, const Path *p, PyObject **ids, PyObject **lens)
{
    *ids = PyTuple_New(p->n);
    *lens = *ids ? PyTuple_New(p->n) : NULL;
    if (*lens == NULL)
        goto fail;
    for (int k = 0; k < p->n; k++) {
        PyObject *id = id_object(self, p->id[k]), *len = PyLong_FromLong(p->len[k]);
        if (id == NULL || len == NULL) {
            Py_XDECREF(len);
            goto fail;
        }
        PyTuple_SET_ITEM(*ids, k, Py_NewRef(id));
        PyTuple_SET_ITEM(*lens, k, len);
    }
    PyObject_GC_UnTrack(*ids);
    PyObject_GC_UnTrack(*lens);
    return 0;
fail:
    Py_CLEAR(*ids);
    Py_CLEAR(*lens);
    return -1;
}

/* A growing array of int32 (ids or lengths) collected over a whole text. */
typedef struct {
    int32_t *items;
    Py_ssize_t n, cap;
} Int32s;

/* The ints of one tuple of the fallback's (ids, lens) into out[:n]: each an int in [lo, hi). */
static int fallback_ints(PyObject *tuple, Py_ssize_t n, long lo, long hi, int32_t *out)
{
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != n)
        return -1;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyTuple_GET_ITEM(tuple, k);
        long x = PyLong_Check(v) ? PyLong_AsLong(v) : lo - 1;
        if (x < lo || x >= hi) {
            PyErr_Clear(); /* an int too large for a long */
            return -1;
        }
        out[k] = (int32_t)x;
    }
    return 0;
}

/* Encode text[a:b] (chars s[a:b]) with fallback(chunk) -> (ids, lens), a chunk this module
 * leaves to Python, and cache the result. */
static const CacheEntry *encode_fallback(Segmenter *self, PyObject *text, const Py_UCS4 *s,
                                         Py_ssize_t a, Py_ssize_t b, uint32_t h,
                                         PyObject *fallback, Py_ssize_t limit)
{
    PyObject *chunk = PyUnicode_Substring(text, a, b);
    PyObject *pair = chunk ? PyObject_CallOneArg(fallback, chunk) : NULL;
    Py_XDECREF(chunk);
    if (pair == NULL)
        return NULL;
    const CacheEntry *e = NULL;
    Py_ssize_t n = PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 &&
                           PyTuple_Check(PyTuple_GET_ITEM(pair, 0))
                       ? PyTuple_GET_SIZE(PyTuple_GET_ITEM(pair, 0))
                       : -1;
    int32_t *buf = n >= 0 ? PyMem_Malloc((2 * n + 1) * sizeof(int32_t)) : NULL;
    Py_ssize_t covered = 0;
    if (buf != NULL && fallback_ints(PyTuple_GET_ITEM(pair, 0), n, 0, self->n_ids, buf) == 0 &&
        fallback_ints(PyTuple_GET_ITEM(pair, 1), n, 0, b - a + 1, buf + n) == 0) {
        for (Py_ssize_t k = 0; k < n; k++)
            covered += buf[n + k];
        /* the fallback may have let another thread cache this chunk meanwhile */
        if (covered == b - a && (e = cache_find(&self->cache, s + a, b - a, h)) == NULL)
            e = cache_insert(&self->cache, limit, s + a, b - a, h, buf, buf + n, n);
    }
    if (e == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "fallback must return (ids, lens): two tuples of ints, "
                        "ids of this vocabulary and lens that add up to the chunk's length");
    PyMem_Free(buf);
    Py_DECREF(pair);
    return e;
}

/* Append the ids (or with `lens`, the char lengths) of the chunk s[a:b] of `text` to out,
 * from the cache, or encoded and cached on a miss. */
static int add_chunk(Segmenter *self, PyObject *text, const Py_UCS4 *s, Py_ssize_t a,
                     Py_ssize_t b, PyObject *fallback, Py_ssize_t limit, int lens, Int32s *out)
{
    uint32_t h = span_hash(s + a, b - a);
    const CacheEntry *e = cache_find(&self->cache, s + a, b - a, h);
    if (e == NULL) {
        Path p;
        if (encode_span(self, s + a, b - a, &p))
            e = cache_insert(&self->cache, limit, s + a, b - a, h, p.id, p.len, p.n);
        else
            e = encode_fallback(self, text, s, a, b, h, fallback, limit);
        if (e == NULL)
            return -1;
    }
    /* copied before any Python code runs again: that could change the cache */
    if (grow((void **)&out->items, &out->cap, out->n + e->n, sizeof(int32_t)) < 0)
        return -1;
    memcpy(out->items + out->n, self->cache.vals + e->val + (lens ? e->n : 0),
           e->n * sizeof(int32_t));
    out->n += e->n;
    return 0;
}

/* The ids (or with `lens`, the char lengths of the tokens) of all chunks of `text`, in order,
 * through the cache. `out` starts empty; the caller frees out->items. */
static int encode_chunks(Segmenter *self, PyObject *text, PyObject *fallback, Py_ssize_t limit,
                         int lens, Int32s *out)
{
    Py_UCS4 *owned;
    const Py_UCS4 *s = text_chars(text, &owned);
    if (s == NULL)
        return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    int r = grow((void **)&out->items, &out->cap, n / 2 + 16, sizeof(int32_t));
    for (Py_ssize_t i = 0, j; r == 0 && i < n; i = j) {
        j = chunk_end(s, n, i);
        r = add_chunk(self, text, s, i, j, fallback, limit, lens, out);
    }
    PyMem_Free(owned);
    return r;
}

/* ---- Python methods ----------------------------------------------------------------- */

static PyObject *Segmenter_encode_chunk(Segmenter *self, PyObject *chunk)
{
    if (!PyUnicode_Check(chunk)) {
        PyErr_Format(PyExc_TypeError, "encode_chunk expects str, got %s", Py_TYPE(chunk)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(chunk);
    if (n == 0 || n > MAX_CHARS)
        Py_RETURN_NONE;
    Py_UCS4 w[MAX_CHARS];
    for (Py_ssize_t i = 0; i < n; i++)
        w[i] = PyUnicode_READ_CHAR(chunk, i);
    Path p;
    PyObject *ids, *lens;
    if (!encode_span(self, w, n, &p))
        Py_RETURN_NONE;
    if (path_to_tuples(self, &p, &ids, &lens) < 0)
        return NULL;
    PyObject *pair = PyTuple_Pack(2, ids, lens);
    Py_DECREF(ids);
    Py_DECREF(lens);
    return pair;
}

/* encode_text(text, fallback, limit) -> list of ids: the chunks of split(text), each from the
 * cache or encoded on a miss (by fallback(chunk) -> (ids, lens) for a chunk left to Python)
 * and cached; the cache is cleared when it holds `limit` chunks. */
static PyObject *Segmenter_encode_text(Segmenter *self, PyObject *args)
{
    PyObject *text, *fallback, *result = NULL;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "UOn:encode_text", &text, &fallback, &limit))
        return NULL;
    Int32s ids = {NULL, 0, 0};
    if (encode_chunks(self, text, fallback, limit, 0, &ids) == 0)
        result = PyList_New(ids.n);
    for (Py_ssize_t k = 0; result != NULL && k < ids.n; k++) {
        PyObject *id = id_object(self, ids.items[k]);
        if (id == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, k, Py_NewRef(id));
    }
    PyMem_Free(ids.items);
    return result;
}

/* The number of chunks in the cache. */
static PyObject *Segmenter_cached(Segmenter *self, void *closure)
{
    return PyLong_FromSsize_t(self->cache.n_entries);
}

/* decode(ids, skip_special_tokens) -> str, or None when decoder.py must decode them (an id that
 * is no int, or text this module leaves to Python). An id out of range raises ValueError, as
 * Tokenizer.decode does. */
static PyObject *Segmenter_decode(Segmenter *self, PyObject *args)
{
    PyObject *ids;
    int skip_special = 0;
    if (!PyArg_ParseTuple(args, "O!|p", &PyList_Type, &ids, &skip_special))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(ids);
    for (Py_ssize_t k = 0; k < n; k++)
        if (!PyLong_Check(PyList_GET_ITEM(ids, k)))
            Py_RETURN_NONE; /* Tokenizer.decode converts them with int() first */
    Decoder d;
    decoder_init(&d, self, NULL, 0, skip_special);
    int r = reserve(&d, 4 * n);
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(ids) && r == 0; k++) {
        PyObject *item = PyList_GET_ITEM(ids, k);
        int overflow;
        long id = PyLong_AsLongAndOverflow(item, &overflow);
        if (id == -1 && PyErr_Occurred()) {
            r = -1;
        } else if (overflow || id < 0 || id >= self->n_ids) {
            PyErr_Format(PyExc_ValueError, "unknown token id %S: this vocabulary has ids 0..%zd",
                         item, self->n_ids - 1);
            r = -1;
        } else {
            r = decode_step(&d, (int32_t)id);
        }
    }
    if (r == 0)
        r = decode_flush(&d);
    PyObject *text = NULL;
    if (r == 0)
        text = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, d.buf, d.len);
    else if (r == D_LEFT)
        text = Py_NewRef(Py_None);
    decoder_free(&d);
    return text;
}

/* offsets(text, fallback, limit, start) -> list of (start, end): the span of every token of
 * encode_text(text, fallback, limit), the first starting at `start`. */
static PyObject *Segmenter_offsets(Segmenter *self, PyObject *args)
{
    PyObject *text, *fallback, *result = NULL;
    Py_ssize_t limit, pos;
    if (!PyArg_ParseTuple(args, "UOnn:offsets", &text, &fallback, &limit, &pos))
        return NULL;
    Int32s lens = {NULL, 0, 0};
    if (encode_chunks(self, text, fallback, limit, 1, &lens) == 0)
        result = PyList_New(lens.n);
    for (Py_ssize_t k = 0; result != NULL && k < lens.n; k++) {
        PyObject *span = PyTuple_New(2);
        PyObject *a = span ? PyLong_FromSsize_t(pos) : NULL;
        PyObject *b = a ? PyLong_FromSsize_t(pos + lens.items[k]) : NULL;
        if (b == NULL) {
            Py_XDECREF(a);
            Py_XDECREF(span);
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(span, 0, a);
        PyTuple_SET_ITEM(span, 1, b);
        PyObject_GC_UnTrack(span); /* two ints: no cycle possible (see path_to_tuples) */
        PyList_SET_ITEM(result, k, span);
        pos += lens.items[k];
    }
    PyMem_Free(lens.items);
    return result;
}

static PyMethodDef Segmenter_methods[] = {
    {"encode_chunk", (PyCFunction)Segmenter_encode_chunk, METH_O,
     "encode_chunk(chunk) -> (ids, lens), or None for a chunk left to the Python encoder."},
    {"encode_text", (PyCFunction)Segmenter_encode_text, METH_VARARGS,
     "encode_text(text, fallback, limit) -> ids of the chunks of split(text), through the cache."},
    {"decode", (PyCFunction)Segmenter_decode, METH_VARARGS,
     "decode(ids, skip_special_tokens=False) -> text, or None where decoder.py must decode."},
    {"offsets", (PyCFunction)Segmenter_offsets, METH_VARARGS,
     "offsets(text, fallback, limit, start) -> (start, end) of each token of encode_text."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Segmenter_getset[] = {
    {"cached", (getter)Segmenter_cached, NULL, "The number of chunks in the cache.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SegmenterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tr_tokenizer._native.Segmenter",
    .tp_basicsize = sizeof(Segmenter),
    .tp_dealloc = (destructor)Segmenter_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled word segmenter (see encoder.ChunkEncoder).",
    .tp_methods = Segmenter_methods,
    .tp_getset = Segmenter_getset,
    .tp_init = (initproc)Segmenter_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef native_functions[] = {
    {"split", (PyCFunction)native_split, METH_O,
     "split(text) -> chunks, as pretokenize.PATTERN.findall(text)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tr_tokenizer._native",
    .m_doc = "Compiled word segmenter for tr_tokenizer (same ids as the Python encoder).",
    .m_size = -1,
    .m_methods = native_functions,
};

PyMODINIT_FUNC PyInit__native(void)
{
    fill_letter_table();
    fill_context_tables();
    fill_re_table();
    if (PyType_Ready(&SegmenterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SegmenterType);
    if (PyModule_AddObject(m, "Segmenter", (PyObject *)&SegmenterType) < 0 ||
        PyModule_AddIntConstant(m, "NUM_CLASSES", NUM_CLASSES) < 0 ||
        PyModule_AddIntConstant(m, "MAX_CHARS", MAX_CHARS) < 0) {
        Py_DECREF(&SegmenterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
