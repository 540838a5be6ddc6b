/*
 * config_tenant - per-tenant overrides of worker settings.
 *
 * config.c stores every "tenants.<tenant>.<setting>" of the file (already
 * validated against the setting's row) as "<tenant>.<setting>"; this file
 * lists the tenants and builds one tenant's effective section: the loaded
 * values with that tenant's overrides on top.
 *
 * Thread-safety: read-only on a loaded struct config.
 */
#include "common/config_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Length of the tenant part of a stored key ("<tenant>.<setting>"). */
static size_t tenant_len(const char *key)
{
    const char *dot = strchr(key, '.');
    return dot ? (size_t)(dot - key) : strlen(key);
}

/* true when kv[i]'s tenant appeared in an earlier entry. */
static bool seen_before(const struct config *cfg, size_t i)
{
    size_t len = tenant_len(cfg->tenant_kv[i].key);

    for (size_t j = 0; j < i; j++)
        if (tenant_len(cfg->tenant_kv[j].key) == len &&
            strncmp(cfg->tenant_kv[j].key, cfg->tenant_kv[i].key, len) == 0)
            return true;
    return false;
}

size_t config_tenant_count(const struct config *cfg)
{
    size_t n = 0;

    for (size_t i = 0; i < cfg->tenant_kv_cnt; i++)
        if (!seen_before(cfg, i))
            n++;
    return n;
}

const char *config_tenant_name(const struct config *cfg, size_t i, char *buf,
                               size_t size)
{
    size_t n = 0;

    for (size_t k = 0; k < cfg->tenant_kv_cnt; k++) {
        size_t len;
        if (seen_before(cfg, k))
            continue;
        if (n++ != i)
            continue;
        len = tenant_len(cfg->tenant_kv[k].key);
        if (len + 1 > size)
            return NULL;
        memcpy(buf, cfg->tenant_kv[k].key, len);
        buf[len] = '\0';
        return buf;
    }
    return NULL;
}

/* The stored override of @p tenant for @p setting, or NULL. */
static const char *override_of(const struct config *cfg, const char *tenant,
                               const char *setting)
{
    size_t tlen = strlen(tenant);

    for (size_t i = 0; i < cfg->tenant_kv_cnt; i++) {
        const char *k = cfg->tenant_kv[i].key;
        if (tenant_len(k) == tlen && strncmp(k, tenant, tlen) == 0 &&
            strcmp(k + tlen + 1, setting) == 0)
            return cfg->tenant_kv[i].value;
    }
    return NULL;
}

enum cs_err config_tenant_section(const struct config *cfg,
                                  const struct config_section *sec,
                                  const char *tenant, void *out, char *errstr,
                                  size_t errstr_size)
{
    for (size_t i = 0; i < sec->nfields; i++)
        if (sec->fields[i].type == CONFIG_STRING)
            *config_member_str(&sec->fields[i], out) = NULL;
    for (size_t i = 0; i < sec->nfields; i++) {
        const struct config_field *f = &sec->fields[i];
        const char *ov = override_of(cfg, tenant, f->name);
        char origin[CONFIG_NAME_BUF];

        if (ov != NULL) {
            snprintf(origin, sizeof(origin), "tenants.%s", tenant);
            if (config_field_set(f, out, ov, origin, errstr, errstr_size) !=
                CS_ERR_OK)
                goto out_free;
            continue;
        }
        switch (f->type) {
        case CONFIG_STRING: {
            const char *v = *config_member_str(f, sec->target);
            *config_member_str(f, out) = strdup(v ? v : "");
            if (*config_member_str(f, out) == NULL) {
                config_set_err(errstr, errstr_size, "out of memory");
                goto out_free;
            }
            break;
        }
        case CONFIG_INT:
            *config_member_int(f, out) = *config_member_int(f, sec->target);
            break;
        case CONFIG_BOOL:
            *config_member_bool(f, out) = *config_member_bool(f, sec->target);
            break;
        }
    }
    return CS_ERR_OK;

out_free:
    config_section_free(sec, out);
    return CS_ERR_NOMEM;
}

void config_section_free(const struct config_section *sec, void *target)
{
    if (sec == NULL || target == NULL)
        return;
    for (size_t i = 0; i < sec->nfields; i++) {
        if (sec->fields[i].type == CONFIG_STRING) {
            free(*config_member_str(&sec->fields[i], target));
            *config_member_str(&sec->fields[i], target) = NULL;
        }
    }
}
