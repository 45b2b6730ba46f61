/* ipmi_sim module: answers DCMI Get Power Reading (DCMI 1.5 section 6.6.1: NetFn 0x2C, group
 * 0xDC, command 0x02) with the whole watts in a file the scenario writes (sim/bmc/ipmi.py).
 * ipmi_sim (Debian's openipmi) has no DCMI of its own; loaded with its `loadlib` command.
 * A missing or unreadable file answers 0xD5 (command not supported in present state). */
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>
#include <OpenIPMI/serv.h>
#include <OpenIPMI/mcserv.h>

static char power_file[4096];

static void put16(unsigned char *p, unsigned v) { p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; }
static void put32(unsigned char *p, uint32_t v) { put16(p, v & 0xffff); put16(p + 2, v >> 16); }

static void dcmi_handler(lmc_data_t *mc, msg_t *msg, unsigned char *rdata,
                         unsigned int *rdata_len, void *cb_data)
{
    unsigned long watts = 0;
    FILE *f;
    if (msg->cmd != 0x02) { rdata[0] = 0xc1; *rdata_len = 1; return; }
    f = fopen(power_file, "r");
    if (!f || fscanf(f, "%lu", &watts) != 1) { if (f) fclose(f); rdata[0] = 0xd5; *rdata_len = 1; return; }
    fclose(f);
    if (watts > 0xffff) watts = 0xffff;
    rdata[0] = 0; rdata[1] = 0xdc;
    put16(rdata + 2, watts); put16(rdata + 4, watts); put16(rdata + 6, watts); put16(rdata + 8, watts);
    put32(rdata + 10, (uint32_t)time(NULL)); put32(rdata + 14, 1000);
    rdata[18] = 0x40;
    *rdata_len = 19;
}

int ipmi_sim_module_print_version(sys_data_t *sys, char *options) { printf("dcmi_power 1\n"); return 0; }

int ipmi_sim_module_init(sys_data_t *sys, const char *options)
{
    snprintf(power_file, sizeof(power_file), "%s", options ? options : "");
    ipmi_emu_register_group_extension_handler(0xdc, dcmi_handler, NULL);
    return 0;
}
