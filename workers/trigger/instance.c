/*
 * instance - keys, ids and the state blob of a journey instance
 * (see instance.h for the layout).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/odata.h"
#include "workers/trigger/instance.h"

/* Namespaces of the derived ids (random, fixed forever). */
#define NS_INSTANCE "5f0c6a0e-2d43-4c55-9a0b-7e3f1c2b9d11"
#define NS_EVENT    "b7a1d2c4-1f3e-4b6a-8c9d-0e2f4a6b8c01"
#define NS_ACTION   "3c9e7b1a-6d2f-4e8b-a4c3-9f1e2d3c4b5a"

/* GUID text -> 16 bytes. */
static void guid_bytes(const char *g, uint8_t out[16])
{
    size_t k = 0;
    for (size_t i = 0; g[i] && k < 32; i++) {
        int v = odata_hex_value(g[i]);
        if (v < 0)
            continue;
        if (k % 2 == 0)
            out[k / 2] = (uint8_t)(v << 4);
        else
            out[k / 2] |= (uint8_t)v;
        k++;
    }
}

static void guid_text(const uint8_t b[16], char out[37])
{
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x"
             "%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10],
             b[11], b[12], b[13], b[14], b[15]);
}

void instance_key(const char *tenant, const char *journey, const char *ptype,
                  const char *pid, const char *email, uint8_t key[INST_KEY_LEN])
{
    char name[512];
    char uuid[37];
    uint8_t b[16];

    if (ptype && ptype[0] && pid && pid[0])
        snprintf(name, sizeof(name), "%s|%s|%s:%s", tenant, journey, ptype,
                 pid);
    else
        snprintf(name, sizeof(name), "%s|%s|email:%s", tenant, journey,
                 email ? email : "");
    odata_uuid5(NS_INSTANCE, name, uuid);
    guid_bytes(uuid, b);
    memcpy(key, b, INST_KEY_LEN);
}

void instance_id_from_event(const char *event_id, uint8_t id[INST_ID_LEN])
{
    char uuid[37];
    uint8_t b[16];

    odata_uuid5(NS_EVENT, event_id, uuid);
    guid_bytes(uuid, b);
    memcpy(id, b, INST_ID_LEN);
}

void instance_action_id(const struct instance *in, unsigned pc, unsigned iter,
                        char out[37])
{
    char name[512];
    char hex[2 * INST_ID_LEN + 1];

    for (size_t i = 0; i < INST_ID_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", in->id[i]);
    if (in->ptype[0] && in->pid[0])
        snprintf(name, sizeof(name), "%s|%s|%s:%s|%s|%u|%u", in->tenant,
                 in->journey, in->ptype, in->pid, hex, pc, iter);
    else
        snprintf(name, sizeof(name), "%s|%s|email:%s|%s|%u|%u", in->tenant,
                 in->journey, in->email, hex, pc, iter);
    odata_uuid5(NS_ACTION, name, out);
}

static void put_u16(struct buf *b, unsigned v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    buf_append(b, x, 2);
}

static void put_u32(struct buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16),
                    (uint8_t)(v >> 24)};
    buf_append(b, x, 4);
}

uint32_t instance_journey_hash(const char *id)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h;
}

static void put_str8(struct buf *b, const char *s)
{
    size_t n = strlen(s);
    uint8_t len = (uint8_t)(n > 255 ? 255 : n);
    buf_append(b, &len, 1);
    buf_append(b, s, len);
}

static char ptype_code(const char *t)
{
    if (strcmp(t, "contact") == 0)
        return 'c';
    if (strcmp(t, "lead") == 0)
        return 'l';
    if (strcmp(t, "account") == 0)
        return 'a';
    return 0;
}

enum cs_err instance_encode(const struct instance *in, bool header_only,
                            struct buf *out)
{
    uint8_t small[3] = {(uint8_t)in->status, (uint8_t)in->pc,
                        (uint8_t)in->iter};
    char code = ptype_code(in->ptype);

    put_u16(out, in->ver & 0xffffu);
    buf_append(out, small, 3);
    put_u32(out, in->started_s);
    put_u32(out, in->deadline_s);
    put_u32(out, in->slot);
    put_u16(out, in->slot_n);
    buf_append(out, in->id, INST_ID_LEN);
    if (!header_only) {
        uint8_t g[16];
        uint8_t n = (uint8_t)in->nattrs;
        put_str8(out, in->tenant);
        put_u32(out, instance_journey_hash(in->journey));
        buf_append(out, &code, 1);
        if (code) {
            guid_bytes(in->pid, g);
            buf_append(out, g, 16);
        }
        put_str8(out, in->email);
        buf_append(out, &n, 1);
        for (size_t i = 0; i < in->nattrs; i++) {
            const char *v = in->attrs[i] ? in->attrs[i] : "";
            size_t len = strlen(v);
            if (len > 65535)
                len = 65535;
            put_u16(out, (unsigned)len);
            buf_append(out, v, len);
        }
    }
    return out->oom ? CS_ERR_NOMEM : CS_ERR_OK;
}

/* A bounded reader over the blob. */
struct rd {
    const uint8_t *p;
    size_t left;
    bool bad;
};

static const uint8_t *take(struct rd *r, size_t n)
{
    const uint8_t *p = r->p;
    if (r->bad || r->left < n) {
        r->bad = true;
        return NULL;
    }
    r->p += n;
    r->left -= n;
    return p;
}

static unsigned get_u16(struct rd *r)
{
    const uint8_t *p = take(r, 2);
    return p ? (unsigned)(p[0] | p[1] << 8) : 0;
}

static uint32_t get_u32(struct rd *r)
{
    const uint8_t *p = take(r, 4);
    return p ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                   (uint32_t)p[3] << 24
             : 0;
}

static void get_str8(struct rd *r, char *out, size_t size)
{
    const uint8_t *lp = take(r, 1);
    const uint8_t *s = lp ? take(r, *lp) : NULL;
    if (!s || *lp >= size) {
        r->bad = true;
        out[0] = '\0';
        return;
    }
    memcpy(out, s, *lp);
    out[*lp] = '\0';
}

enum cs_err instance_decode(const void *blob, size_t len, struct instance *in)
{
    struct rd r = {blob, len, false};
    const uint8_t *p;

    memset(in, 0, sizeof(*in));
    in->ver = get_u16(&r);
    p = take(&r, 3);
    if (p) {
        in->status = p[0];
        in->pc = p[1];
        in->iter = p[2];
    }
    in->started_s = get_u32(&r);
    in->deadline_s = get_u32(&r);
    in->slot = get_u32(&r);
    in->slot_n = get_u16(&r);
    p = take(&r, INST_ID_LEN);
    if (p)
        memcpy(in->id, p, INST_ID_LEN);
    if (r.bad)
        return CS_ERR_REDIS_PROTOCOL;
    if (r.left == 0)
        return CS_ERR_OK; /* header only (an ended instance) */
    get_str8(&r, in->tenant, sizeof(in->tenant));
    in->journey_hash = get_u32(&r);
    p = take(&r, 1);
    if (p && *p) {
        const uint8_t *g = take(&r, 16);
        const char *t = *p == 'c' ? "contact" : *p == 'l' ? "lead" : "account";
        if (g) {
            guid_text(g, in->pid);
            snprintf(in->ptype, sizeof(in->ptype), "%s", t);
        }
    }
    get_str8(&r, in->email, sizeof(in->email));
    p = take(&r, 1);
    if (p && *p > INST_ATTRS_MAX)
        r.bad = true;
    for (size_t i = 0; p && !r.bad && i < *p; i++) {
        unsigned n = get_u16(&r);
        const uint8_t *s = take(&r, n);
        if (!s)
            break;
        in->attrs[i] = malloc(n + 1);
        if (!in->attrs[i]) {
            instance_clear(in);
            return CS_ERR_NOMEM;
        }
        memcpy(in->attrs[i], s, n);
        in->attrs[i][n] = '\0';
        in->nattrs = i + 1;
    }
    if (r.bad) {
        instance_clear(in);
        return CS_ERR_REDIS_PROTOCOL;
    }
    return CS_ERR_OK;
}

void instance_clear(struct instance *in)
{
    for (size_t i = 0; i < INST_ATTRS_MAX; i++)
        free(in->attrs[i]);
    memset(in, 0, sizeof(*in));
}
