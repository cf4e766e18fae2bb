/*
 * Addresses: the port check of "host:port", the mapping of name
 * resolution failures to plaza's error codes, and the local port of a
 * socket.
 *
 * getaddrinfo takes any string as a service and reduces a number modulo
 * 65536 ("99999" bound port 34463), so the port is checked here first.
 * Its failures are EAI_* values, which overlap the negative errno values
 * (EAI_NONAME is -2, like -ENOENT): they become the PZ_EDNS_* codes,
 * apart from every errno, and pz_strerror names them.
 */
#define _GNU_SOURCE
#include "io_internal.h"
#include "kit_io.h"

#include <netdb.h>
#include <netinet/in.h>

int pz__port_check(const char *port)
{
    if (!port[0])
        return -EINVAL;
    unsigned long v = 0;
    for (const char *p = port; *p; p++) {
        if (*p < '0' || *p > '9' || p - port >= 5)
            return -EINVAL;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    return v <= 65535 ? 0 : -EINVAL;
}

int pz__dns_error(int eai, int err)
{
    switch (eai) {
    case EAI_NONAME:
        return PZ_EDNS_NONAME;
    case EAI_AGAIN:
        return PZ_EDNS_AGAIN;
    case EAI_FAIL:
        return PZ_EDNS_FAIL;
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
#endif
        return PZ_EDNS_NODATA;
    case EAI_MEMORY:
        return -ENOMEM;
    case EAI_SYSTEM:
        return err > 0 ? -err : PZ_EDNS_OTHER;
    default:
        return PZ_EDNS_OTHER;
    }
}

int pz_sock_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -EAFNOSUPPORT;
}
