/* pbw_json.h: reading small JSON files such as a model's config.json (json-c underneath).
 *
 *     pbw_err err;
 *     json_object *cfg = pbw_json_load("config.json", PBW_JSON_MAX_FILE, &err);
 *     if (!cfg) { puts(err.msg); return 1; }       // "config.json:3:14: ..." on a syntax error
 *     int64_t hidden;
 *     if (pbw_json_get_int(cfg, "hidden_size", 768, &hidden, &err)) ...   // type errors name the key
 *     json_object *vision = pbw_json_get_object(cfg, "vision_config");    // NULL if absent
 *     json_object_put(cfg);                         // the caller owns the tree
 *
 * A missing key or a null value gives the default; a value of the wrong type is an error
 * naming the key ("'hidden_size' must be an integer, not a string"). Integers are accepted
 * where floats are asked for, not the other way round. Returned strings and objects belong to
 * the tree and live as long as it.
 */
#ifndef PBW_JSON_H
#define PBW_JSON_H

#include <json-c/json.h>

#include "../core/pbw_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PBW_JSON_MAX_FILE (64u << 20)

/* Parses the whole file (at most max_len bytes; only whitespace may follow the value). Returns
 * a new reference, or NULL with err naming the file, line and column. */
json_object *pbw_json_load(const char *path, size_t max_len, pbw_err *err);
/* Same for text in memory; `name` is used in messages. */
json_object *pbw_json_parse(const char *text, size_t len, const char *name, pbw_err *err);

int pbw_json_get_int(json_object *obj, const char *key, int64_t def, int64_t *out, pbw_err *err);
int pbw_json_get_float(json_object *obj, const char *key, double def, double *out, pbw_err *err);
int pbw_json_get_bool(json_object *obj, const char *key, int def, int *out, pbw_err *err);
int pbw_json_get_string(json_object *obj, const char *key, const char *def, const char **out,
                        pbw_err *err);
/* The object under key, or NULL if absent, null or not an object. */
json_object *pbw_json_get_object(json_object *obj, const char *key);

#ifdef __cplusplus
}
#endif
#endif
