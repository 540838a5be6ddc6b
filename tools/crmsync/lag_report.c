/*
 * lag_report - evaluation bookkeeping and rendering; see lag_report.h.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "lag_report.h"

enum {
    COL_GROUP,
    COL_TOPIC,
    COL_PART,
    COL_CUR,
    COL_END,
    COL_LAG,
    COL_VERDICT,
    COL_RULE,
    COL_CLIENT,
    COL_CNT
};

#define CELL_MAX 256

static const char *const headers[COL_CNT] = {
    "GROUP", "TOPIC",   "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET",
    "LAG",   "VERDICT", "RULE",      "CLIENT-ID"};

/* One table row of text cells. */
struct row {
    char cell[COL_CNT][CELL_MAX];
};

int64_t lag_obs_lag(const struct lag_obs *o)
{
    int64_t lag = o->high - (o->committed >= 0 ? o->committed : o->low);

    return lag > 0 ? lag : 0;
}

void lag_group_eval(struct lag_group *g, int64_t now_ms)
{
    g->verdict = LAG_OK;
    g->total_lag = 0;
    for (size_t i = 0; i < g->part_cnt; i++) {
        struct lag_part *p = &g->parts[i];

        p->verdict = lag_window_eval(p->win, now_ms, &p->rule);
        g->verdict = lag_verdict_worst(g->verdict, p->verdict);
        g->total_lag += lag_obs_lag(&g->obs[i]);
    }
}

void lag_group_free_all(struct lag_group *groups, size_t cnt)
{
    if (!groups)
        return;
    for (size_t i = 0; i < cnt; i++) {
        struct lag_group *g = &groups[i];

        for (size_t j = 0; j < g->part_cnt; j++)
            lag_window_free(g->parts[j].win);
        free(g->parts);
        free(g->obs);
        lag_strv_free(g->topics, g->topic_cnt);
        free(g->name);
    }
    free(groups);
}

static void print_row(FILE *out, const struct row *r, const int *width)
{
    int last = COL_CNT - 1;

    /* no trailing blanks: stop at the last non-empty cell */
    while (last > 0 && r->cell[last][0] == '\0')
        last--;
    for (int c = 0; c < last; c++)
        fprintf(out, "%-*s  ", width[c], r->cell[c]);
    fprintf(out, "%s\n", r->cell[last]);
}

static void part_row(struct row *r, const struct lag_group *g, size_t i)
{
    const struct lag_obs *o = &g->obs[i];
    const struct lag_part *p = &g->parts[i];

    snprintf(r->cell[COL_GROUP], CELL_MAX, "%s", g->name);
    snprintf(r->cell[COL_TOPIC], CELL_MAX, "%s", o->topic);
    snprintf(r->cell[COL_PART], CELL_MAX, "%d", (int)o->partition);
    if (o->committed >= 0)
        snprintf(r->cell[COL_CUR], CELL_MAX, "%" PRId64, o->committed);
    else
        snprintf(r->cell[COL_CUR], CELL_MAX, "-");
    snprintf(r->cell[COL_END], CELL_MAX, "%" PRId64, o->high);
    snprintf(r->cell[COL_LAG], CELL_MAX, "%" PRId64, lag_obs_lag(o));
    snprintf(r->cell[COL_VERDICT], CELL_MAX, "%s",
             lag_verdict_name(p->verdict));
    snprintf(r->cell[COL_RULE], CELL_MAX, "%s", lag_rule_name(p->rule));
    snprintf(r->cell[COL_CLIENT], CELL_MAX, "%s",
             o->client_id[0] ? o->client_id : "-");
}

static void total_row(struct row *r, const struct lag_group *g)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->cell[COL_GROUP], CELL_MAX, "%s", g->name);
    snprintf(r->cell[COL_TOPIC], CELL_MAX, "%s",
             g->part_cnt ? "TOTAL" : "TOTAL (no committed offsets)");
    snprintf(r->cell[COL_LAG], CELL_MAX, "%" PRId64, g->total_lag);
    snprintf(r->cell[COL_VERDICT], CELL_MAX, "%s",
             lag_verdict_name(g->verdict));
}

static void widen(int *width, const struct row *r)
{
    for (int c = 0; c < COL_CNT; c++) {
        int n = (int)strlen(r->cell[c]);

        if (n > width[c])
            width[c] = n;
    }
}

void lag_report_text(FILE *out, const struct lag_group *groups, size_t cnt)
{
    struct row hdr;
    struct row r;
    int width[COL_CNT];

    for (int c = 0; c < COL_CNT; c++) {
        snprintf(hdr.cell[c], CELL_MAX, "%s", headers[c]);
        width[c] = (int)strlen(headers[c]);
    }
    /* first pass: column widths */
    for (size_t gi = 0; gi < cnt; gi++) {
        for (size_t i = 0; i < groups[gi].part_cnt; i++) {
            part_row(&r, &groups[gi], i);
            widen(width, &r);
        }
    }
    print_row(out, &hdr, width);
    for (size_t gi = 0; gi < cnt; gi++) {
        const struct lag_group *g = &groups[gi];

        for (size_t i = 0; i < g->part_cnt; i++) {
            part_row(&r, g, i);
            print_row(out, &r, width);
        }
        total_row(&r, g);
        print_row(out, &r, width);
    }
    if (cnt == 0)
        fprintf(out, "(no consumer groups found)\n");
}

static json_t *part_json(const struct lag_group *g, size_t i)
{
    const struct lag_obs *o = &g->obs[i];
    const struct lag_part *p = &g->parts[i];

    return json_pack(
        "{s:s, s:i, s:o, s:I, s:I, s:I, s:s, s:s, s:I, s:o}", "topic", o->topic,
        "partition", (int)o->partition, "current_offset",
        o->committed >= 0 ? json_integer((json_int_t)o->committed)
                          : json_null(),
        "log_start_offset", (json_int_t)o->low, "log_end_offset",
        (json_int_t)o->high, "lag", (json_int_t)lag_obs_lag(o), "verdict",
        lag_verdict_name(p->verdict), "rule", lag_rule_name(p->rule), "samples",
        (json_int_t)lag_window_count(p->win), "client_id",
        o->client_id[0] ? json_string(o->client_id) : json_null());
}

json_t *lag_report_json(const struct lag_group *groups, size_t cnt)
{
    enum lag_verdict all = LAG_OK;
    json_t *arr = json_array();
    json_t *doc;

    if (!arr)
        return NULL;
    for (size_t gi = 0; gi < cnt; gi++) {
        const struct lag_group *g = &groups[gi];
        json_t *parts = json_array();
        json_t *gj;

        all = lag_verdict_worst(all, g->verdict);
        for (size_t i = 0; parts && i < g->part_cnt; i++) {
            if (json_array_append_new(parts, part_json(g, i)) != 0) {
                json_decref(parts);
                parts = NULL;
            }
        }
        gj = parts ? json_pack("{s:s, s:s, s:I, s:o}", "group", g->name,
                               "verdict", lag_verdict_name(g->verdict),
                               "total_lag", (json_int_t)g->total_lag,
                               "partitions", parts)
                   : NULL;
        if (!gj || json_array_append_new(arr, gj) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    doc = json_pack("{s:s, s:o}", "verdict", lag_verdict_name(all), "groups",
                    arr);
    return doc;
}
