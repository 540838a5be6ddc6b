/*
 * members - a marketing list's members page by page (see members.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/odata.h"
#include "workers/listsync/members.h"

#define FORMATTED_PREFER                                                       \
    "odata.include-annotations=\"OData.Community.Display.V1.FormattedValue\""
#define FETCH_PREFER                                                           \
    "odata.include-annotations=\"OData.Community.Display.V1.FormattedValue,"   \
    "Microsoft.Dynamics.CRM.fetchxmlpagingcookie,"                             \
    "Microsoft.Dynamics.CRM.morerecords\""
#define COOKIE_ANN "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"
#define MORE_ANN   "@Microsoft.Dynamics.CRM.morerecords"

const char *const members_sets[3] = {"contacts", "accounts", "leads"};
const char *const members_keys[3] = {"contactid", "accountid", "leadid"};
const char *const members_entities[3] = {"contact", "account", "lead"};
static const char *const assoc[3] = {"listcontact_association",
                                     "listaccount_association",
                                     "listlead_association"};

struct members {
    struct crm *crm; /* borrowed */
    char prefer[300];
    char *next;   /* static: next URL/path; NULL at the end */
    char *fetch;  /* dynamic: the FetchXML (without paging attributes) */
    int page;     /* dynamic: next page number */
    char *cookie; /* dynamic: paging cookie of the last page, or NULL */
    int page_size;
    int set;
    bool dynamic;
    bool done;
    json_t *doc; /* current page (owned) */
};

static int set_of_code(long code)
{
    return code == 1 ? 1 : code == 4 ? 2 : 0; /* 2 = contact */
}

/* Adds <attribute name="..."/> for the columns the job needs (the id,
 * emailaddress1, statecode and the mapped ones) to the list's FetchXML
 * entity unless it already names them or asks for all attributes. */
static char *fetch_with_columns(const char *query, const char *key,
                                const char *select)
{
    const char *ent = strstr(query, "<entity");
    const char *open_end = ent ? strchr(ent, '>') : NULL;
    struct buf cols = {0};
    struct buf b = {0};
    char *list;
    char *save = NULL;

    if (!open_end || open_end[-1] == '/' || strstr(query, "<all-attributes"))
        return strdup(query);
    buf_appendf(&cols, "%s,emailaddress1,statecode%s%s", key,
                select && *select ? "," : "", select ? select : "");
    list = buf_detach(&cols);
    buf_append(&b, query, (size_t)(open_end - query) + 1);
    for (char *c = list ? strtok_r(list, ",", &save) : NULL; c;
         c = strtok_r(NULL, ",", &save)) {
        char needle[160];
        size_t len = strlen(c);
        /* FetchXML names a lookup by its logical name: _x_value -> x */
        if (c[0] == '_' && len > 7 && strcmp(c + len - 6, "_value") == 0) {
            c[len - 6] = '\0';
            c++;
        }
        snprintf(needle, sizeof(needle), "name=\"%s\"", c);
        if (!strstr(query, needle))
            buf_appendf(&b, "<attribute name=\"%s\" />", c);
    }
    free(list);
    buf_appends(&b, open_end + 1);
    return buf_detach(&b);
}

struct members *members_open(struct crm *crm, const char *list_id,
                             const char *select, int page_size,
                             struct list_meta *meta, enum cs_err *err,
                             char *errstr, size_t errstr_size)
{
    struct members *r = calloc(1, sizeof(*r));
    json_t *list = NULL;
    char path[512];
    const char *name;
    const char *query;
    json_t *mc;

    if (!r) {
        *err = CS_ERR_NOMEM;
        return NULL;
    }
    r->crm = crm;
    r->page_size = page_size;
    r->page = 1;
    snprintf(path, sizeof(path),
             "lists(%s)?$select=listname,type,createdfromcode,query,"
             "membercount",
             list_id);
    *err =
        crm->ops->get_json(crm->self, path, false, &list, errstr, errstr_size);
    if (*err != CS_ERR_OK)
        goto out_fail;
    name = json_string_value(json_object_get(list, "listname"));
    snprintf(meta->name, sizeof(meta->name), "%s", name ? name : "");
    meta->dynamic = json_is_true(json_object_get(list, "type"));
    meta->set = set_of_code(
        (long)json_integer_value(json_object_get(list, "createdfromcode")));
    mc = json_object_get(list, "membercount");
    meta->membercount = json_is_integer(mc) ? (long)json_integer_value(mc) : -1;
    r->set = meta->set;
    r->dynamic = meta->dynamic;
    /* Paging cookie and "more records" come only when asked for. */
    snprintf(r->prefer, sizeof(r->prefer), "odata.maxpagesize=%d,%s", page_size,
             r->dynamic ? FETCH_PREFER : FORMATTED_PREFER);
    if (r->dynamic) {
        query = json_string_value(json_object_get(list, "query"));
        if (!query || !strstr(query, "<fetch")) {
            snprintf(errstr, errstr_size,
                     "dynamic list %s has no FetchXML query", list_id);
            *err = CS_ERR_HTTP_CLIENT;
            goto out_fail;
        }
        r->fetch = fetch_with_columns(query, members_keys[r->set], select);
    } else {
        struct buf b = {0};
        buf_appendf(&b, "lists(%s)/%s?$select=%s,emailaddress1,statecode%s%s",
                    list_id, assoc[r->set], members_keys[r->set],
                    select && *select ? "," : "", select ? select : "");
        r->next = buf_detach(&b);
    }
    if ((r->dynamic && !r->fetch) || (!r->dynamic && !r->next)) {
        *err = CS_ERR_NOMEM;
        goto out_fail;
    }
    json_decref(list);
    return r;

out_fail:
    json_decref(list);
    members_free(r);
    return NULL;
}

/* The FetchXML with count/page/paging-cookie on <fetch>, URL-encoded. */
static char *fetch_path(struct members *r)
{
    const char *p = strstr(r->fetch, "<fetch");
    struct buf x = {0};
    struct buf path = {0};
    char *enc;

    buf_append(&x, r->fetch, (size_t)(p - r->fetch) + 6);
    buf_appendf(&x, " count=\"%d\" page=\"%d\"", r->page_size, r->page);
    if (r->cookie) {
        /* the cookie is XML itself: escape it as an attribute value */
        buf_appends(&x, " paging-cookie=\"");
        for (const char *c = r->cookie; *c; c++) {
            switch (*c) {
            case '<':
                buf_appends(&x, "&lt;");
                break;
            case '>':
                buf_appends(&x, "&gt;");
                break;
            case '"':
                buf_appends(&x, "&quot;");
                break;
            case '&':
                buf_appends(&x, "&amp;");
                break;
            default:
                buf_append(&x, c, 1);
            }
        }
        buf_appends(&x, "\"");
    }
    buf_appends(&x, p + 6);
    enc = odata_url_encode(x.data ? x.data : "");
    buf_free(&x);
    if (!enc)
        return NULL;
    buf_appendf(&path, "%s?fetchXml=%s", members_sets[r->set], enc);
    free(enc);
    return buf_detach(&path);
}

/* Decodes a percent-encoded string in place (the paging cookie comes
 * URL-encoded twice inside its annotation). */
static void url_decode(char *s)
{
    char *w = s;
    for (char *p = s; *p; p++) {
        if (*p == '%' && odata_hex_value(p[1]) >= 0 &&
            odata_hex_value(p[2]) >= 0) {
            *w++ = (char)(odata_hex_value(p[1]) * 16 + odata_hex_value(p[2]));
            p += 2;
        } else {
            *w++ = *p;
        }
    }
    *w = '\0';
}

/* The pagingcookie="..." attribute of the annotation, decoded. */
static char *cookie_of(const char *ann)
{
    const char *p = ann ? strstr(ann, "pagingcookie=\"") : NULL;
    const char *end;
    char *c;

    if (!p)
        return NULL;
    p += strlen("pagingcookie=\"");
    end = strchr(p, '"');
    if (!end)
        return NULL;
    c = strndup(p, (size_t)(end - p));
    if (c) {
        url_decode(c);
        url_decode(c);
    }
    return c;
}

enum cs_err members_next(struct members *r, json_t **rows, char *errstr,
                         size_t errstr_size)
{
    char *path = NULL;
    enum cs_err err;

    *rows = NULL;
    json_decref(r->doc);
    r->doc = NULL;
    if (r->done)
        return CS_ERR_OK;
    if (r->dynamic)
        path = fetch_path(r);
    else if (r->next)
        path = strdup(r->next);
    if (!path) {
        r->done = true;
        return r->dynamic ? CS_ERR_NOMEM : CS_ERR_OK;
    }
    err = r->crm->ops->get_page(r->crm->self, path, r->prefer, &r->doc, errstr,
                                errstr_size);
    free(path);
    if (err != CS_ERR_OK)
        return err; /* the same page is asked again next time */
    if (r->dynamic) {
        free(r->cookie);
        r->cookie =
            cookie_of(json_string_value(json_object_get(r->doc, COOKIE_ANN)));
        r->page++;
        if (!json_is_true(json_object_get(r->doc, MORE_ANN)))
            r->done = true;
    } else {
        const char *next =
            json_string_value(json_object_get(r->doc, "@odata.nextLink"));
        free(r->next);
        r->next = next ? strdup(next) : NULL;
        if (!r->next)
            r->done = true;
    }
    *rows = json_object_get(r->doc, "value");
    return CS_ERR_OK;
}

void members_free(struct members *r)
{
    if (!r)
        return;
    json_decref(r->doc);
    free(r->next);
    free(r->fetch);
    free(r->cookie);
    free(r);
}
