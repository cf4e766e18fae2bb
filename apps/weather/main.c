/*
 * plaza-weather: the weather service on plaza (PROTOCOL.md).
 *
 *   plaza-weather serve ...   the service (server.c)
 *   plaza-weather load ...    the open-loop load generator (load.c)
 *   plaza-weather demo        both, right and wrong locks side by side (demo.c)
 *   plaza-weather verify --db PATH --acked FILE
 *                             checks that every acknowledged reading is stored
 */
#define _GNU_SOURCE
#include "weather.h"

#include <stdio.h>
#include <string.h>


int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "serve") == 0)
        return wx_serve_main(argc - 1, argv + 1);
    if (strcmp(cmd, "load") == 0)
        return wx_load_main(argc - 1, argv + 1);
    if (strcmp(cmd, "demo") == 0)
        return wx_demo_main(argc - 1, argv + 1);
    if (strcmp(cmd, "verify") == 0)
        return wx_verify_main(argc - 1, argv + 1);
    fprintf(argc > 1 && strcmp(cmd, "--help") != 0 ? stderr : stdout,
            "usage: plaza-weather serve --listen HOST:PORT --db PATH [--workers N] [--wrong-locks]\n"
            "                           [--forecast-ttl-ms 1000] [--refresh-ms 1000]\n"
            "       plaza-weather load --target HOST:PORT --connections 32 --duration 10\n"
            "                          --post-rate 2000 --get-rate 8000 --batch 10 [--json]\n"
            "       plaza-weather demo\n"
            "       plaza-weather verify --db PATH --acked FILE\n");
    return argc > 1 && strcmp(cmd, "--help") != 0 ? 2 : 0;
}
