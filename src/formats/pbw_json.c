/* pbw_json.c: json-c helpers with messages that name the file, position and key. */
#include "pbw_json.h"

#include <stdlib.h>
#include <string.h>

#include "pbw_file.h"

static void line_col(const char *text, size_t off, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

json_object *pbw_json_parse(const char *text, size_t len, const char *name, pbw_err *err) {
    if (len > INT32_MAX) {
        pbw_err_set(err, "%s: too large for JSON", name);
        return NULL;
    }
    json_tokener *tok = json_tokener_new_ex(64);
    if (!tok) {
        pbw_err_set(err, "%s: out of memory", name);
        return NULL;
    }
    json_object *obj = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error e = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    int line, col;
    if (!obj || e != json_tokener_success) {
        if (obj) json_object_put(obj);
        line_col(text, end < len ? end : len, &line, &col);
        pbw_err_set(err, "%s:%d:%d: %s", name, line, col,
                    e == json_tokener_continue ? "unexpected end of JSON"
                                               : json_tokener_error_desc(e));
        return NULL;
    }
    for (size_t i = end; i < len; i++) {
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\n' && text[i] != '\r') {
            line_col(text, i, &line, &col);
            json_object_put(obj);
            pbw_err_set(err, "%s:%d:%d: unexpected text after the JSON value", name, line, col);
            return NULL;
        }
    }
    return obj;
}

json_object *pbw_json_load(const char *path, size_t max_len, pbw_err *err) {
    void *buf;
    size_t len;
    if (pbw_file_read(path, max_len, &buf, &len, err)) return NULL;
    json_object *obj = pbw_json_parse(buf, len, path, err);
    free(buf);
    return obj;
}

static const char *type_desc(json_object *v) {
    switch (json_object_get_type(v)) {
    case json_type_null: return "null";
    case json_type_boolean: return "a boolean";
    case json_type_double: return "a fraction";
    case json_type_int: return "an integer";
    case json_type_object: return "an object";
    case json_type_array: return "an array";
    case json_type_string: return "a string";
    }
    return "?";
}

/* The value under key, or NULL if obj is not an object, the key is absent or its value null. */
static json_object *lookup(json_object *obj, const char *key) {
    json_object *v = NULL;
    if (!obj || !json_object_is_type(obj, json_type_object)) return NULL;
    if (!json_object_object_get_ex(obj, key, &v)) return NULL;
    return v && !json_object_is_type(v, json_type_null) ? v : NULL;
}

int pbw_json_get_int(json_object *obj, const char *key, int64_t def, int64_t *out, pbw_err *err) {
    json_object *v = lookup(obj, key);
    *out = def;
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_int))
        return pbw_err_set(err, "'%s' must be an integer, not %s", key, type_desc(v));
    *out = json_object_get_int64(v);
    return 0;
}

int pbw_json_get_float(json_object *obj, const char *key, double def, double *out, pbw_err *err) {
    json_object *v = lookup(obj, key);
    *out = def;
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
        return pbw_err_set(err, "'%s' must be a number, not %s", key, type_desc(v));
    *out = json_object_get_double(v);
    return 0;
}

int pbw_json_get_bool(json_object *obj, const char *key, int def, int *out, pbw_err *err) {
    json_object *v = lookup(obj, key);
    *out = def;
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_boolean))
        return pbw_err_set(err, "'%s' must be true or false, not %s", key, type_desc(v));
    *out = json_object_get_boolean(v) ? 1 : 0;
    return 0;
}

int pbw_json_get_string(json_object *obj, const char *key, const char *def, const char **out,
                        pbw_err *err) {
    json_object *v = lookup(obj, key);
    *out = def;
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_string))
        return pbw_err_set(err, "'%s' must be a string, not %s", key, type_desc(v));
    *out = json_object_get_string(v);
    return 0;
}

json_object *pbw_json_get_object(json_object *obj, const char *key) {
    json_object *v = lookup(obj, key);
    return v && json_object_is_type(v, json_type_object) ? v : NULL;
}
