/* Internal helpers of the I/O layer's service-kit pieces (addr.c). */
#ifndef PZ_IO_KIT_IO_H
#define PZ_IO_KIT_IO_H

/* 0 if port is a decimal number from 0 to 65535, else -EINVAL. */
int pz__port_check(const char *port);
/* The plaza error code of a getaddrinfo failure (errno for EAI_SYSTEM). */
int pz__dns_error(int eai, int err);

#endif
