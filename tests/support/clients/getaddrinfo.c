/* A real resolver client for fqdnd's tests: resolves a name with the C library's getaddrinfo
 * (built twice: musl-gcc -static and glibc gcc) and optionally connects to the first address.
 *
 *   getaddrinfo NAME [PORT]
 *
 * Prints one line per address ("ADDR"), then "connected ADDR PORT" when PORT is given and a TCP
 * connection succeeded. Exit 0 on success, 2 when the lookup fails (prints gai_strerror),
 * 3 when every connect failed. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s NAME [PORT]\n", argv[0]);
        return 64;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(argv[1], argc == 3 ? argv[2] : NULL, &hints, &res);
    if (rc != 0) {
        printf("error %s\n", gai_strerror(rc));
        return 2;
    }
    char buf[INET6_ADDRSTRLEN];
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        const void *a = ai->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                                 : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        printf("%s\n", inet_ntop(ai->ai_family, a, buf, sizeof buf));
    }
    if (argc == 3) {
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            int fd = socket(ai->ai_family, SOCK_STREAM, 0);
            if (fd < 0) continue;
            /* Bounded: a dropped SYN must not hang the test for the kernel's full retry time. */
            struct timeval tv = {.tv_sec = 3, .tv_usec = 0};
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                const void *a = ai->ai_family == AF_INET
                                    ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                    : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
                printf("connected %s %s\n", inet_ntop(ai->ai_family, a, buf, sizeof buf), argv[2]);
                close(fd);
                freeaddrinfo(res);
                return 0;
            }
            printf("connect-failed %s\n", strerror(errno));
            close(fd);
        }
        freeaddrinfo(res);
        return 3;
    }
    freeaddrinfo(res);
    return 0;
}
