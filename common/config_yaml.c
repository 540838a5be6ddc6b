/*
 * config_yaml - reads the YAML config file (libyaml) for config_load().
 *
 * Walks the document's mappings and hands every value it does not descend
 * into to config.c (config_loader_file_value) under its dotted name, so
 * `redis: {url: x}` and `redis.url: x` arrive the same way. Scalars "~" and
 * "null" arrive as "", sequences of scalars joined with ','. This file knows
 * YAML, not fields: which mappings are groups and what a key means is
 * config.c's business. Part of the config module; see config_internal.h.
 *
 * Thread-safety: none needed; runs inside config_load() at start-up.
 */
#include "common/config_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YAML_MAX_DEPTH 16 /* also stops alias cycles */

/* State of one config_yaml_read() call. */
struct yaml_walk {
    struct config_loader *ld;
    const char *path;     /* borrowed */
    yaml_document_t *doc; /* borrowed */
    char *errstr;
    size_t errstr_size;
};

/* Text of a scalar node; plain "~", "null" and "" mean empty. */
static const char *scalar_text(const yaml_node_t *node)
{
    const char *s = (const char *)node->data.scalar.value;

    if (node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
        (strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
         strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0))
        return "";
    return s;
}

/* Joins a sequence of scalars with ',' (topic lists). NULL when an item is
 * not a scalar or memory ran out. Caller frees. */
static char *sequence_join(yaml_document_t *doc, yaml_node_t *seq)
{
    size_t len = 1;
    char *out;
    yaml_node_item_t *it;

    for (it = seq->data.sequence.items.start; it < seq->data.sequence.items.top;
         it++) {
        yaml_node_t *n = yaml_document_get_node(doc, *it);
        if (n == NULL || n->type != YAML_SCALAR_NODE)
            return NULL;
        len += strlen(scalar_text(n)) + 1;
    }
    out = calloc(1, len);
    if (out == NULL)
        return NULL;
    for (it = seq->data.sequence.items.start; it < seq->data.sequence.items.top;
         it++) {
        const char *t = scalar_text(yaml_document_get_node(doc, *it));
        size_t used = strlen(out);
        snprintf(out + used, len - used, "%s%s", used > 0 ? "," : "", t);
    }
    return out;
}

/* One "name: value" where value is not walked into. */
static enum cs_err walk_value(struct yaml_walk *w, const char *name,
                              yaml_node_t *val)
{
    char origin[CONFIG_NAME_BUF + 64];
    enum config_value_kind kind = CONFIG_VALUE_OTHER;
    const char *text = NULL;
    char *joined = NULL;
    enum cs_err err;

    snprintf(origin, sizeof(origin), "%s line %lu", w->path,
             (unsigned long)val->start_mark.line + 1);
    if (val->type == YAML_SCALAR_NODE) {
        kind = CONFIG_VALUE_SCALAR;
        text = scalar_text(val);
    } else if (val->type == YAML_SEQUENCE_NODE) {
        kind = CONFIG_VALUE_LIST;
        joined = sequence_join(w->doc, val);
        text = joined;
    }
    err = config_loader_file_value(w->ld, name, kind, text, origin);
    free(joined);
    return err;
}

/* Walks a mapping; @p prefix is the dotted name of the mapping ("" = root). */
static enum cs_err walk_mapping(struct yaml_walk *w, const char *prefix,
                                yaml_node_t *map, int depth)
{
    yaml_node_pair_t *pair;

    if (depth > YAML_MAX_DEPTH) {
        config_set_err(w->errstr, w->errstr_size, "'%s' nested too deep in %s",
                       prefix, w->path);
        return CS_ERR_CONFIG;
    }
    for (pair = map->data.mapping.pairs.start;
         pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(w->doc, pair->key);
        yaml_node_t *val = yaml_document_get_node(w->doc, pair->value);
        char name[CONFIG_NAME_BUF];
        int n;
        enum cs_err err;

        if (key == NULL || val == NULL || key->type != YAML_SCALAR_NODE) {
            config_set_err(w->errstr, w->errstr_size,
                           "keys must be scalars in %s (under '%s')", w->path,
                           prefix);
            return CS_ERR_CONFIG;
        }
        n = snprintf(name, sizeof(name), "%s%s%s", prefix,
                     prefix[0] != '\0' ? "." : "",
                     (const char *)key->data.scalar.value);
        if (n < 0 || (size_t)n >= sizeof(name)) {
            config_set_err(w->errstr, w->errstr_size,
                           "key too long in %s line %lu", w->path,
                           (unsigned long)key->start_mark.line + 1);
            return CS_ERR_CONFIG;
        }
        if (val->type == YAML_MAPPING_NODE &&
            config_loader_is_mapping(w->ld, name))
            err = walk_mapping(w, name, val, depth + 1);
        else
            err = walk_value(w, name, val);
        if (err != CS_ERR_OK)
            return err;
    }
    return CS_ERR_OK;
}

enum cs_err config_yaml_read(struct config_loader *ld, const char *path,
                             char *errstr, size_t errstr_size)
{
    struct yaml_walk w = {
        .ld = ld, .path = path, .errstr = errstr, .errstr_size = errstr_size};
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_node_t *root;
    FILE *fp;
    enum cs_err err = CS_ERR_CONFIG;

    fp = fopen(path, "rb");
    if (fp == NULL) {
        config_set_err(errstr, errstr_size, "cannot open config file %s: %s",
                       path, strerror(errno));
        return CS_ERR_CONFIG;
    }
    if (!yaml_parser_initialize(&parser)) {
        config_set_err(errstr, errstr_size, "out of memory");
        err = CS_ERR_NOMEM;
        goto out_close;
    }
    yaml_parser_set_input_file(&parser, fp);
    if (!yaml_parser_load(&parser, &doc)) {
        config_set_err(errstr, errstr_size,
                       "cannot parse %s line %lu column %lu: %s%s%s", path,
                       (unsigned long)parser.problem_mark.line + 1,
                       (unsigned long)parser.problem_mark.column + 1,
                       parser.problem != NULL ? parser.problem : "syntax error",
                       parser.context != NULL ? " " : "",
                       parser.context != NULL ? parser.context : "");
        goto out_parser;
    }
    w.doc = &doc;
    root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        err = CS_ERR_OK; /* empty file: defaults + environment */
    } else if (root->type != YAML_MAPPING_NODE) {
        config_set_err(errstr, errstr_size,
                       "%s: the top level must be a mapping (key: value)",
                       path);
    } else {
        err = walk_mapping(&w, "", root, 0);
    }
    w.doc = NULL;
    yaml_document_delete(&doc);
out_parser:
    yaml_parser_delete(&parser);
out_close:
    fclose(fp);
    return err;
}
