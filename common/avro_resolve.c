/*
 * avro_resolve - writer -> reader resolution for the avro codec. avro-c's
 * resolved writer rejects reader fields the writer lacks, so the reader is
 * first projected (minus those fields, which must have defaults), data is
 * resolved into the projection, then copied into a full reader value with
 * the missing fields set from their schema defaults. Writer fields the
 * reader lacks are dropped by avro-c. Internal to the codec; declarations
 * and ownership in avro_internal.h.
 */
#include "common/avro_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Reader projection: avro-c's resolved writer rejects reader fields the
 * writer lacks, so data is resolved into the reader minus those fields and
 * then copied into a full reader value, the missing fields taking their
 * defaults.
 * ------------------------------------------------------------------------ */

static bool json_type_is(const json_t *t, const char *name)
{
    const char *s;

    if (json_is_string(t))
        return strcmp(json_string_value(t), name) == 0;
    s = json_string_value(json_object_get(t, "type"));
    return s && strcmp(s, name) == 0;
}

static json_t *project_type(const json_t *rt, avro_schema_t ws, bool *pruned,
                            char *errstr, size_t errstr_size);

static json_t *project_record(const json_t *rt, avro_schema_t ws, bool *pruned,
                              char *errstr, size_t errstr_size)
{
    const json_t *fields = json_object_get(rt, "fields");
    json_t *out = json_deep_copy(rt);
    json_t *nf = json_array();
    size_t i;

    if (!out || !nf)
        goto out_free;
    for (i = 0; i < json_array_size(fields); i++) {
        const json_t *f = json_array_get(fields, i);
        const char *name = json_string_value(json_object_get(f, "name"));
        int wi = name ? avro_schema_record_field_get_index(ws, name) : -1;
        json_t *copy;
        json_t *ptype;

        if (wi < 0) {
            if (!json_object_get(f, "default")) {
                avc_set_err(
                    errstr, errstr_size,
                    "reader field '%s' is missing in the writer and has "
                    "no default",
                    name ? name : "?");
                goto out_free;
            }
            *pruned = true;
            continue;
        }
        ptype = project_type(json_object_get(f, "type"),
                             avro_schema_record_field_get_by_index(ws, wi),
                             pruned, errstr, errstr_size);
        copy = json_deep_copy(f);
        if (!ptype || !copy || json_object_set_new(copy, "type", ptype) ||
            json_array_append_new(nf, copy)) {
            json_decref(copy);
            goto out_free;
        }
    }
    if (json_object_set_new(out, "fields", nf))
        goto out_free_out;
    return out;

out_free:
    json_decref(nf);
out_free_out:
    json_decref(out);
    return NULL;
}

/* Writer branch matching reader branch @p rb (same type, same name). */
static avro_schema_t match_writer_branch(const json_t *rb, avro_schema_t ws)
{
    const char *rname = json_string_value(json_object_get(rb, "name"));
    size_t i;

    for (i = 0; i < avro_schema_union_size(ws); i++) {
        avro_schema_t b = avro_schema_union_branch(ws, (int)i);

        if (is_avro_link(b))
            b = avro_schema_link_target(b);
        if (!json_type_is(rb, avro_schema_type_name(b)) &&
            !(json_type_is(rb, "record") && is_avro_record(b)))
            continue;
        if (!rname || (avro_schema_name(b) &&
                       strcmp(avc_short_name(rname), avro_schema_name(b)) == 0))
            return b;
    }
    return NULL;
}

static json_t *project_type(const json_t *rt, avro_schema_t ws, bool *pruned,
                            char *errstr, size_t errstr_size)
{
    json_t *out;
    size_t i;

    if (is_avro_link(ws))
        ws = avro_schema_link_target(ws);
    if (json_is_array(rt)) {
        out = json_array();
        for (i = 0; out && i < json_array_size(rt); i++) {
            const json_t *rb = json_array_get(rt, i);
            avro_schema_t wb =
                is_avro_union(ws) ? match_writer_branch(rb, ws) : ws;
            json_t *pb = (wb && json_is_object(rb))
                             ? project_type(rb, wb, pruned, errstr, errstr_size)
                             : json_deep_copy(rb);

            if (!pb || json_array_append_new(out, pb)) {
                json_decref(out);
                return NULL;
            }
        }
        return out;
    }
    if (json_type_is(rt, "record") && is_avro_record(ws))
        return project_record(rt, ws, pruned, errstr, errstr_size);
    if (json_is_object(rt) &&
        ((json_type_is(rt, "array") && is_avro_array(ws)) ||
         (json_type_is(rt, "map") && is_avro_map(ws)))) {
        const char *key = is_avro_array(ws) ? "items" : "values";
        json_t *inner =
            project_type(json_object_get(rt, key),
                         is_avro_array(ws) ? avro_schema_array_items(ws)
                                           : avro_schema_map_values(ws),
                         pruned, errstr, errstr_size);

        if (!inner)
            return NULL;
        out = json_deep_copy(rt);
        if (!out) {
            json_decref(inner);
            return NULL;
        }
        if (json_object_set_new(out, key, inner)) {
            json_decref(out);
            return NULL;
        }
        return out;
    }
    return json_deep_copy(rt);
}

/* Copies @p src (projected reader) into @p dst (reader), filling defaults. */
static enum cs_err copy_fill(const struct schema_entry *rd, avro_value_t *src,
                             avro_value_t *dst, char *errstr,
                             size_t errstr_size)
{
    avro_value_t sc;
    avro_value_t dc;
    const char *name;
    char full[FULLNAME_MAX];
    char key[FULLNAME_MAX + 128];
    size_t n = 0; /* avro_value_get_size() leaves it unset on EINVAL */
    size_t i;
    int disc;
    enum cs_err rc;

    switch (avro_value_get_type(dst)) {
    case AVRO_RECORD:
        avro_value_get_size(dst, &n);
        avc_fullname(avro_value_get_schema(dst), full, sizeof(full));
        for (i = 0; i < n; i++) {
            avro_value_get_by_index(dst, i, &dc, &name);
            if (avro_value_get_by_name(src, name, &sc, NULL) == 0) {
                rc = copy_fill(rd, &sc, &dc, errstr, errstr_size);
            } else {
                const json_t *def;

                snprintf(key, sizeof(key), "%s.%s", full, name);
                def = json_object_get(rd->defaults, key);
                if (!def) {
                    avc_set_err(errstr, errstr_size, "no default for %s", key);
                    return CS_ERR_SCHEMA_INCOMPATIBLE;
                }
                rc = avc_json_to_value(rd, &dc, def, false, name, errstr,
                                       errstr_size);
            }
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    case AVRO_UNION:
        if (avro_value_get_discriminant(src, &disc) ||
            avro_value_get_current_branch(src, &sc) ||
            avro_value_set_branch(dst, disc, &dc))
            return CS_ERR_DECODE;
        return copy_fill(rd, &sc, &dc, errstr, errstr_size);
    case AVRO_ARRAY:
        avro_value_get_size(src, &n);
        for (i = 0; i < n; i++) {
            if (avro_value_get_by_index(src, i, &sc, NULL) ||
                avro_value_append(dst, &dc, NULL))
                return CS_ERR_NOMEM;
            rc = copy_fill(rd, &sc, &dc, errstr, errstr_size);
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    case AVRO_MAP:
        avro_value_get_size(src, &n);
        for (i = 0; i < n; i++) {
            if (avro_value_get_by_index(src, i, &sc, &name) ||
                avro_value_add(dst, name, &dc, NULL, NULL))
                return CS_ERR_NOMEM;
            rc = copy_fill(rd, &sc, &dc, errstr, errstr_size);
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    default:
        return avro_value_copy_fast(dst, src) ? CS_ERR_DECODE : CS_ERR_OK;
    }
}

/* ------------------------------------------------------------------------
 * Resolutions: build, read through, clear
 * ------------------------------------------------------------------------ */

/* Builds the resolution of writer @p w into reader @p rd into *r. */
void avc_resolver_build(struct resolver_entry *r, struct schema_entry *w,
                        struct schema_entry *rd)
{
    char abuf[256];
    json_t *pjson = NULL;
    char *ptext = NULL;
    avro_schema_t target = rd->schema;
    bool pruned = false;

    r->status = CS_ERR_SCHEMA_INCOMPATIBLE;
    if (avro_schema_equal(w->schema, rd->schema)) {
        r->direct = true;
        r->status = CS_ERR_OK;
        return;
    }
    pjson = project_type(rd->root, w->schema, &pruned, r->reason,
                         sizeof(r->reason));
    if (!pjson) {
        if (!r->reason[0])
            snprintf(r->reason, sizeof(r->reason), "cannot project reader");
        goto out_free_json;
    }
    if (pruned) {
        ptext = json_dumps(pjson, JSON_COMPACT);
        if (!ptext || avro_schema_from_json_length(ptext, strlen(ptext),
                                                   &r->projected) != 0) {
            r->projected = NULL;
            snprintf(r->reason, sizeof(r->reason), "projected reader: %s",
                     avc_err_text(abuf, sizeof(abuf)));
            goto out_free_json;
        }
        r->projected_iface = avro_generic_class_from_schema(r->projected);
        if (!r->projected_iface)
            goto out_free_json;
        target = r->projected;
    }
    r->resolver = avro_resolved_writer_new(w->schema, target);
    if (!r->resolver) {
        snprintf(r->reason, sizeof(r->reason), "%s",
                 avc_err_text(abuf, sizeof(abuf)));
        goto out_free_json;
    }
    r->status = CS_ERR_OK;
out_free_json:
    free(ptext);
    json_decref(pjson);
}

void avc_resolver_clear(struct resolver_entry *r)
{
    if (r->resolver)
        avro_value_iface_decref(r->resolver);
    if (r->projected_iface)
        avro_value_iface_decref(r->projected_iface);
    if (r->projected)
        avro_schema_decref(r->projected);
}

enum cs_err avc_resolver_decode(struct resolver_entry *r,
                                struct schema_entry *rd, avro_reader_t reader,
                                const char *p, size_t n, avro_value_t *out,
                                char *errstr, size_t errstr_size)
{
    avro_value_t tmp;
    avro_value_t *target = out;
    char abuf[256];
    enum cs_err rc = CS_ERR_OK;
    int arc;

    if (avro_generic_value_new(rd->iface, out) != 0)
        return CS_ERR_NOMEM;
    if (r->projected_iface) {
        if (avro_generic_value_new(r->projected_iface, &tmp) != 0) {
            rc = CS_ERR_NOMEM;
            goto out_free_out;
        }
        target = &tmp;
    }
    avro_reader_memory_set_source(reader, p, (int64_t)n);
    if (r->direct) {
        arc = avro_value_read(reader, target);
    } else {
        /* A fresh resolved-writer value per decode, never a cached one:
         * avro-c 1.11's resolved map writer keeps the wrappers of every
         * entry it ever saw (its reset does not clear them), so a reused
         * value grew with every map entry of every message, and the
         * array / map wrapper buffers it kept were reported as leaks by
         * LeakSanitizer (found by tests/fuzz/fuzz_avro_frame). */
        avro_value_t rvalue;

        if (avro_resolved_writer_new_value(r->resolver, &rvalue) != 0) {
            rc = CS_ERR_NOMEM;
            goto out_free_tmp;
        }
        avro_resolved_writer_set_dest(&rvalue, target);
        arc = avro_value_read(reader, &rvalue);
        avro_resolved_writer_clear_dest(&rvalue);
        avro_value_decref(&rvalue);
    }
    if (arc != 0) {
        avc_set_err(errstr, errstr_size, "avro: %s",
                    avc_err_text(abuf, sizeof(abuf)));
        rc = CS_ERR_DECODE;
    } else if (target != out) {
        rc = copy_fill(rd, target, out, errstr, errstr_size);
    }
out_free_tmp:
    if (target != out)
        avro_value_decref(&tmp);
out_free_out:
    if (rc != CS_ERR_OK) {
        avro_value_decref(out);
        memset(out, 0, sizeof(*out));
    }
    return rc;
}
