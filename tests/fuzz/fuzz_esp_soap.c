/*
 * fuzz_esp_soap - the ESP's SOAP responses (outside input): soap_parse()
 * and every reader the connector uses on a parsed response must neither
 * crash nor leak on any bytes. Seeds: the recorded Optimizely responses
 * (../shared/reference/golden/optimizely).
 */
#include <stdint.h>
#include <stdlib.h>

#include "common/soap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct soap_response *r = NULL;
    char err[256];
    const char *code, *string;
    char clean[256];
    char *s = NULL;
    long long v;
    int *ints = NULL;
    char **strs = NULL;
    size_t n = 0, row = 0;

    soap_init();
    if (soap_parse((const char *)data, size, &r, err, sizeof(err)) != 0)
        return 0;
    if (soap_fault(r, &code, &string))
        soap_fault_sanitize(string, "secret", clean, sizeof(clean));
    (void)soap_response_name(r);
    (void)soap_has_return(r);
    if (soap_return_string(r, &s) == 0)
        free(s);
    (void)soap_return_long(r, &v);
    if (soap_return_int_array(r, &ints, &n) == 0)
        free(ints);
    if (soap_return_string_array(r, &strs, &n, &row) == 0)
        soap_strings_free(strs, n);
    soap_response_free(r);
    return 0;
}
