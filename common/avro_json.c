/*
 * avro_json - JSON -> Avro value for the avro codec: the machinery of
 * avro_codec_from_json, also used to set reader fields from their schema
 * defaults on decode. Records by field name (missing fields from defaults),
 * unions bare or as {"<type name>": value}, enums by symbol, timestamp-millis
 * longs also from RFC 3339 strings. Internal to the codec; declaration in
 * avro_internal.h.
 */
#include "common/avro_internal.h"

#include <stdio.h>
#include <string.h>

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t era;
    unsigned yoe;
    unsigned doy;
    unsigned doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = (unsigned)(y - era * 400);
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool parse_digits(const char **p, int n, int *out)
{
    int v = 0;
    int i;

    for (i = 0; i < n; i++) {
        if ((*p)[i] < '0' || (*p)[i] > '9')
            return false;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return true;
}

/* RFC 3339 "YYYY-MM-DDTHH:MM:SS[.fff...](Z|+hh:mm|-hh:mm)" -> epoch ms. */
static bool parse_rfc3339_ms(const char *s, int64_t *out)
{
    int y, mo, d, h, mi, sec, oh = 0, om = 0, ms = 0, scale = 100;
    int64_t t;
    int sign = 0;

    if (!parse_digits(&s, 4, &y) || *s++ != '-' || !parse_digits(&s, 2, &mo) ||
        *s++ != '-' || !parse_digits(&s, 2, &d) ||
        (*s != 'T' && *s != 't' && *s != ' '))
        return false;
    s++;
    if (!parse_digits(&s, 2, &h) || *s++ != ':' || !parse_digits(&s, 2, &mi) ||
        *s++ != ':' || !parse_digits(&s, 2, &sec))
        return false;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    if (*s == '.') {
        s++;
        if (*s < '0' || *s > '9')
            return false;
        for (; *s >= '0' && *s <= '9'; s++) {
            ms += (*s - '0') * scale;
            scale /= 10;
        }
    }
    if (*s == 'Z' || *s == 'z') {
        s++;
    } else if (*s == '+' || *s == '-') {
        sign = *s++ == '+' ? 1 : -1;
        if (!parse_digits(&s, 2, &oh) || *s++ != ':' ||
            !parse_digits(&s, 2, &om) || oh > 23 || om > 59)
            return false;
    } else {
        return false;
    }
    if (*s != '\0')
        return false;
    t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 +
        mi * 60 + sec - sign * (oh * 3600 + om * 60);
    *out = t * 1000 + ms;
    return true;
}

/* Does JSON @p j fit branch schema @p b (by JSON kind only)? */
static bool json_fits(const json_t *j, avro_schema_t b, bool ts_ok)
{
    if (is_avro_link(b))
        b = avro_schema_link_target(b);
    switch (avro_typeof(b)) {
    case AVRO_NULL:
        return json_is_null(j);
    case AVRO_BOOLEAN:
        return json_is_boolean(j);
    case AVRO_INT32:
    case AVRO_INT64:
        return json_is_integer(j) ||
               (ts_ok && is_avro_int64(b) && json_is_string(j));
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
        return json_is_number(j);
    case AVRO_STRING:
    case AVRO_BYTES:
    case AVRO_FIXED:
        return json_is_string(j);
    case AVRO_ENUM:
        return json_is_string(j) &&
               avro_schema_enum_get_by_name(b, json_string_value(j)) >= 0;
    case AVRO_ARRAY:
        return json_is_array(j);
    case AVRO_MAP:
    case AVRO_RECORD:
        return json_is_object(j);
    default:
        return false;
    }
}

static enum cs_err bad_json(const char *field, const char *what, char *errstr,
                            size_t errstr_size)
{
    avc_set_err(errstr, errstr_size, "field '%s': %s", field ? field : "(top)",
                what);
    return CS_ERR_INVALID_EVENT;
}

static enum cs_err union_from_json(const struct schema_entry *e,
                                   avro_value_t *v, const json_t *j, bool ts_ok,
                                   const char *field, char *errstr,
                                   size_t errstr_size)
{
    avro_schema_t s = avro_value_get_schema(v);
    avro_value_t branch;
    size_t n = avro_schema_union_size(s);
    size_t i;

    /* {"<type name>": value}: the Avro JSON encoding of a union. */
    if (json_is_object(j) && json_object_size(j) == 1) {
        const char *key = json_object_iter_key(json_object_iter((json_t *)j));

        for (i = 0; i < n; i++) {
            avro_schema_t b = avro_schema_union_branch(s, (int)i);
            char full[FULLNAME_MAX];

            if (is_avro_link(b))
                b = avro_schema_link_target(b);
            avc_fullname(b, full, sizeof(full));
            if (strcmp(key, full) == 0 ||
                strcmp(key, avro_schema_type_name(b)) == 0 ||
                (avro_schema_name(b) &&
                 strcmp(key, avro_schema_name(b)) == 0)) {
                if (avro_value_set_branch(v, (int)i, &branch))
                    return CS_ERR_NOMEM;
                return avc_json_to_value(e, &branch, json_object_get(j, key),
                                         ts_ok, field, errstr, errstr_size);
            }
        }
    }
    for (i = 0; i < n; i++) {
        if (!json_fits(j, avro_schema_union_branch(s, (int)i), ts_ok))
            continue;
        if (avro_value_set_branch(v, (int)i, &branch))
            return CS_ERR_NOMEM;
        return avc_json_to_value(e, &branch, j, ts_ok, field, errstr,
                                 errstr_size);
    }
    return bad_json(field, "value fits no branch of the union", errstr,
                    errstr_size);
}

/* True if @p v is a long or a union with a long branch. */
static bool may_hold_long(avro_value_t *v)
{
    avro_schema_t s = avro_value_get_schema(v);
    size_t i;

    if (is_avro_int64(s))
        return true;
    if (!is_avro_union(s))
        return false;
    for (i = 0; i < avro_schema_union_size(s); i++) {
        if (is_avro_int64(avro_schema_union_branch(s, (int)i)))
            return true;
    }
    return false;
}

static enum cs_err record_from_json(const struct schema_entry *e,
                                    avro_value_t *v, const json_t *j,
                                    char *errstr, size_t errstr_size)
{
    avro_schema_t s = avro_value_get_schema(v);
    char full[FULLNAME_MAX] = "";
    char key[FULLNAME_MAX + 128];
    const char *jkey;
    json_t *jval;
    size_t i;
    enum cs_err rc;

    if (!json_is_object(j))
        return bad_json(avro_schema_name(s), "expected an object", errstr,
                        errstr_size);
    json_object_foreach((json_t *)j, jkey, jval)
    {
        if (avro_schema_record_field_get_index(s, jkey) < 0) {
            avc_set_err(errstr, errstr_size, "unknown field '%s' in %s", jkey,
                        avro_schema_name(s));
            return CS_ERR_INVALID_EVENT;
        }
    }
    for (i = 0; i < avro_schema_record_size(s); i++) {
        avro_value_t child;
        const char *name;
        const json_t *fj;
        bool ts_ok;

        avro_value_get_by_index(v, i, &child, &name);
        fj = json_object_get(j, name);
        /* The "<Record>.<field>" key is only needed for a default or for
         * a long given as a string (the hot path needs neither). */
        key[0] = '\0';
        if (!fj || (json_is_string(fj) && may_hold_long(&child))) {
            if (!full[0])
                avc_fullname(s, full, sizeof(full));
            snprintf(key, sizeof(key), "%s.%s", full, name);
            if (!fj)
                fj = json_object_get(e->defaults, key);
        }
        if (!fj) {
            avc_set_err(errstr, errstr_size,
                        "missing required field '%s' in %s", name, full);
            return CS_ERR_INVALID_EVENT;
        }
        ts_ok = key[0] && json_object_get(e->ts_fields, key) != NULL;
        rc = avc_json_to_value(e, &child, fj, ts_ok, name, errstr, errstr_size);
        if (rc != CS_ERR_OK)
            return rc;
    }
    return CS_ERR_OK;
}

static enum cs_err long_from_json(avro_value_t *v, const json_t *j, bool ts_ok,
                                  const char *field, char *errstr,
                                  size_t errstr_size)
{
    int64_t ms;

    if (json_is_integer(j))
        return avro_value_set_long(v, json_integer_value(j)) ? CS_ERR_NOMEM
                                                             : CS_ERR_OK;
    if (ts_ok && json_is_string(j)) {
        if (!parse_rfc3339_ms(json_string_value(j), &ms))
            return bad_json(field, "not an RFC 3339 timestamp", errstr,
                            errstr_size);
        return avro_value_set_long(v, ms) ? CS_ERR_NOMEM : CS_ERR_OK;
    }
    return bad_json(field, "expected an integer", errstr, errstr_size);
}

enum cs_err avc_json_to_value(const struct schema_entry *e, avro_value_t *v,
                              const json_t *j, bool ts_ok, const char *field,
                              char *errstr, size_t errstr_size)
{
    avro_schema_t s = avro_value_get_schema(v);
    avro_value_t child;
    const char *key;
    json_t *jv;
    size_t i;
    int sym;
    enum cs_err rc;

    switch (avro_value_get_type(v)) {
    case AVRO_NULL:
        if (!json_is_null(j))
            return bad_json(field, "expected null", errstr, errstr_size);
        return avro_value_set_null(v) ? CS_ERR_NOMEM : CS_ERR_OK;
    case AVRO_BOOLEAN:
        if (!json_is_boolean(j))
            return bad_json(field, "expected a boolean", errstr, errstr_size);
        return avro_value_set_boolean(v, json_is_true(j)) ? CS_ERR_NOMEM
                                                          : CS_ERR_OK;
    case AVRO_INT32:
        if (!json_is_integer(j) || json_integer_value(j) < INT32_MIN ||
            json_integer_value(j) > INT32_MAX)
            return bad_json(field, "expected a 32-bit integer", errstr,
                            errstr_size);
        return avro_value_set_int(v, (int32_t)json_integer_value(j))
                   ? CS_ERR_NOMEM
                   : CS_ERR_OK;
    case AVRO_INT64:
        return long_from_json(v, j, ts_ok, field, errstr, errstr_size);
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
        if (!json_is_number(j))
            return bad_json(field, "expected a number", errstr, errstr_size);
        if (avro_value_get_type(v) == AVRO_FLOAT)
            return avro_value_set_float(v, (float)json_number_value(j))
                       ? CS_ERR_NOMEM
                       : CS_ERR_OK;
        return avro_value_set_double(v, json_number_value(j)) ? CS_ERR_NOMEM
                                                              : CS_ERR_OK;
    case AVRO_STRING:
        if (!json_is_string(j))
            return bad_json(field, "expected a string", errstr, errstr_size);
        /* avro-c string sizes include the terminating NUL. */
        return avro_value_set_string_len(v, json_string_value(j),
                                         json_string_length(j) + 1)
                   ? CS_ERR_NOMEM
                   : CS_ERR_OK;
    case AVRO_BYTES:
        if (!json_is_string(j))
            return bad_json(field, "expected a string", errstr, errstr_size);
        return avro_value_set_bytes(v, (void *)json_string_value(j),
                                    json_string_length(j))
                   ? CS_ERR_NOMEM
                   : CS_ERR_OK;
    case AVRO_FIXED:
        if (!json_is_string(j) ||
            (int64_t)json_string_length(j) != avro_schema_fixed_size(s))
            return bad_json(field, "expected a string of the fixed size",
                            errstr, errstr_size);
        return avro_value_set_fixed(v, (void *)json_string_value(j),
                                    json_string_length(j))
                   ? CS_ERR_NOMEM
                   : CS_ERR_OK;
    case AVRO_ENUM:
        sym = json_is_string(j)
                  ? avro_schema_enum_get_by_name(s, json_string_value(j))
                  : -1;
        if (sym < 0)
            return bad_json(field, "not a symbol of the enum", errstr,
                            errstr_size);
        return avro_value_set_enum(v, sym) ? CS_ERR_NOMEM : CS_ERR_OK;
    case AVRO_UNION:
        return union_from_json(e, v, j, ts_ok, field, errstr, errstr_size);
    case AVRO_RECORD:
        return record_from_json(e, v, j, errstr, errstr_size);
    case AVRO_MAP:
        if (!json_is_object(j))
            return bad_json(field, "expected an object (map)", errstr,
                            errstr_size);
        json_object_foreach((json_t *)j, key, jv)
        {
            if (avro_value_add(v, key, &child, NULL, NULL))
                return CS_ERR_NOMEM;
            rc = avc_json_to_value(e, &child, jv, ts_ok, field, errstr,
                                   errstr_size);
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    case AVRO_ARRAY:
        if (!json_is_array(j))
            return bad_json(field, "expected an array", errstr, errstr_size);
        for (i = 0; i < json_array_size(j); i++) {
            if (avro_value_append(v, &child, NULL))
                return CS_ERR_NOMEM;
            rc = avc_json_to_value(e, &child, json_array_get(j, i), ts_ok,
                                   field, errstr, errstr_size);
            if (rc != CS_ERR_OK)
                return rc;
        }
        return CS_ERR_OK;
    default:
        return bad_json(field, "unsupported schema type", errstr, errstr_size);
    }
}
