/*
 * soap - SOAP 1.1 RPC/encoded requests and responses, as the Optimizely
 * Campaign (optivo broadmail, Apache Axis 1.4) SOAP API speaks them.
 *
 * Requests are written into a struct buf (buf.h) in the shape the recorded
 * Savon client sent and the service accepted: prefixes env/impl/xsd/xsi,
 * one <impl:METHOD> element with named, unqualified parts and no xsi:type
 * annotations; arrays as <name><element>v</element>...</name>, arrays of
 * arrays as <name><element><element>v</element>...</element>...</name>.
 * Every value goes through soap_escape(): & < > " ' become entities, CR
 * becomes &#13; (so it survives XML line-end normalisation), characters XML
 * 1.0 cannot carry (other C0 controls, invalid UTF-8) become U+FFFD.
 *
 * Responses are parsed with libxml2 (no network, no entity expansion, no
 * error output) into a struct soap_response: either a fault (faultcode,
 * faultstring) or the first part of the <METHODResponse> element. Parts,
 * array items and nested arrays may be multiRef references (href="#id")
 * resolved wherever the referenced element is in the Body (listed before or
 * after the reference); xsi:type is not required; soapenc:Array items may
 * have any element name; xsi:nil="true" is a NULL string.
 *
 * Ownership: soap_parse returns a response the caller frees with
 * soap_response_free; strings it hands out are borrowed from it unless
 * stated otherwise. Nothing here logs.
 *
 * Thread-safety: all functions are reentrant (different buffers/responses
 * in different threads); libxml2 must have been initialised once
 * (soap_init(), idempotent, called by esp_new) before threads parse.
 */
#ifndef CRMSYNC_SOAP_H
#define CRMSYNC_SOAP_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"
#include "common/err.h"

/** Envelope namespace prefix of Optimizely's RPC services: + "RpcSession". */
#define SOAP_OPTIVO_NS_PREFIX "urn:api.broadmail.de/soap11/"

/** Most nested href/array levels followed while reading a response. */
#define SOAP_MAX_DEPTH 16

struct soap_response; /* opaque: a parsed response */

/** @brief Initialises libxml2 once per process (safe to call again). */
void soap_init(void);

/**
 * @brief Appends @p s (NUL-terminated UTF-8, borrowed) XML-escaped for
 *        element content or attribute values (see the header comment).
 * @returns as buf_append().
 */
enum cs_err soap_escape(struct buf *b, const char *s);

/**
 * @brief Starts a request: XML declaration, env:Envelope with the xsd, xsi,
 *        impl (= @p ns, e.g. "urn:api.broadmail.de/soap11/RpcSession") and
 *        env namespaces, env:Body and <impl:METHOD>.
 */
enum cs_err soap_begin(struct buf *b, const char *ns, const char *method);

/** @brief Closes <impl:METHOD>, env:Body and env:Envelope. */
enum cs_err soap_end(struct buf *b, const char *method);

/** @brief Appends <NAME>escaped value</NAME>; NULL value -> xsi:nil. */
enum cs_err soap_add_string(struct buf *b, const char *name, const char *value);

/** @brief Appends <NAME> (open a compound part, e.g. an array). */
enum cs_err soap_open(struct buf *b, const char *name);

/** @brief Appends </NAME>. */
enum cs_err soap_close(struct buf *b, const char *name);

/**
 * @brief Appends a string array part: <NAME><element>v</element>...</NAME>
 *        (values borrowed; NULL entries become xsi:nil).
 */
enum cs_err soap_add_string_array(struct buf *b, const char *name,
                                  const char *const *values, size_t n);

/**
 * @brief Parses a response body (borrowed, @p len bytes).
 * @param out receives the response (caller frees with soap_response_free).
 * @returns CS_ERR_OK (a fault is a successful parse: see soap_fault) or
 *          CS_ERR_DECODE when the body is not a SOAP envelope with a Body
 *          holding a fault or a response element; CS_ERR_NOMEM.
 */
enum cs_err soap_parse(const char *body, size_t len, struct soap_response **out,
                       char *errstr, size_t errstr_size);

/** @brief Frees a response. NULL is fine. */
void soap_response_free(struct soap_response *r);

/**
 * @returns true when the response is a SOAP fault; then *code and *string
 *          (either may be NULL) receive faultcode and faultstring (borrowed
 *          from @p r, "" when absent).
 */
bool soap_fault(const struct soap_response *r, const char **code,
                const char **string);

/** @returns the local name of the response element (e.g. "loginResponse";
 *  borrowed from @p r), "" for a fault. */
const char *soap_response_name(const struct soap_response *r);

/** @returns true when the response element has a return part. */
bool soap_has_return(const struct soap_response *r);

/**
 * @brief Reads the return part as a string.
 * @param out receives the text (caller frees with free()), NULL for nil.
 * @returns CS_ERR_OK, CS_ERR_DECODE (fault, no return part, dangling
 *          href, an array), CS_ERR_NOMEM.
 */
enum cs_err soap_return_string(const struct soap_response *r, char **out);

/**
 * @brief Reads the return part as an integer (xsd:int/long/short...).
 * @returns CS_ERR_OK, CS_ERR_DECODE (missing, nil, not a decimal integer).
 */
enum cs_err soap_return_long(const struct soap_response *r, long long *out);

/**
 * @brief Reads the return part as an array of int (soapenc:Array; items
 *        inline or multiRef).
 * @param out receives the values (caller frees with free(); NULL when
 *        *n == 0).
 * @returns CS_ERR_OK, CS_ERR_DECODE (not an array, an item not an int, nil
 *          item), CS_ERR_NOMEM.
 */
enum cs_err soap_return_int_array(const struct soap_response *r, int **out,
                                  size_t *n);

/**
 * @brief Reads the return part as an array of strings (String[]); for
 *        String[][] the rows are flattened in order (row-major) and
 *        *row_len receives the length of the first row (0 for String[]).
 * @param out receives n strings (caller frees with soap_strings_free);
 *        nil items are NULL.
 */
enum cs_err soap_return_string_array(const struct soap_response *r, char ***out,
                                     size_t *n, size_t *row_len);

/** @brief Frees an array from soap_return_string_array. NULL is fine. */
void soap_strings_free(char **v, size_t n);

/**
 * @brief Copies a faultstring for logs and errstr without echoed
 *        credentials: bracket groups like "[<sid>,<mandator>,<user>]" (no
 *        blanks inside, at least two commas) and the blank after them are
 *        dropped, every occurrence of @p secret (may be NULL/"") becomes
 *        "***", CR/LF/TAB become blanks.
 * @param out caller buffer; always NUL-terminated when out_size > 0.
 */
void soap_fault_sanitize(const char *faultstring, const char *secret, char *out,
                         size_t out_size);

#endif
