/*
 * spank_jobenergy: energy tags for Slurm jobs (SPANK plugin, spank(7)).
 *
 *   --energy-model=NAME                   model the job trains or serves
 *   --energy-phase=training|inference|other
 *   --energy-tag=KEY=VALUE                free tag, repeatable (at most MAX_TAGS)
 *   --energy-limit=2.5kWh                 the job's energy limit: a decimal number and a
 *                                         unit, Wh kWh MWh J kJ MJ (case-insensitive), from
 *                                         1 J to 1 GWh; enforced by the node agents
 *                                         (agent/energy_limits.py)
 *
 * Where the values go:
 *   - the job control environment (spank_job_control_setenv): the Prolog, Epilog,
 *     PrologSlurmctld and EpilogSlurmctld see SPANK_ENERGY_MODEL, SPANK_ENERGY_PHASE and
 *     SPANK_ENERGY_TAGS ("k1=v1;k2=v2"), and send them to the collector, and
 *     SPANK_ENERGY_LIMIT_UJ (the limit as integer microjoules, DESIGN.md decision 1), which
 *     the node prolog writes into the job map for the agent;
 *   - the job's own environment as ENERGY_MODEL, ENERGY_PHASE, ENERGY_TAGS,
 *     ENERGY_LIMIT_UJ: set in the
 *     sbatch/srun process (propagated by --export=ALL, the default) and, for jobs started
 *     with --export=NONE, again in slurmstepd's task_init from the forwarded option (Slurm
 *     forwards only the last value of a repeated option to the remote side, so there the
 *     tags are the last --energy-tag only).
 * A bad value makes sbatch/srun refuse the job with a message naming the option.
 *
 * Build: make -C slurm_plugins (needs slurm/spank.h: Debian libslurm-dev).
 * Load:  echo "optional /usr/local/lib/slurm/spank_jobenergy.so" \
 *            > /etc/slurm/plugstack.conf.d/jobenergy.conf
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <slurm/spank.h>

SPANK_PLUGIN(jobenergy, 1);

#define MAX_TAGS 32
#define MAX_KEY 64
#define MAX_VALUE 255
#define TAGS_BUF (MAX_TAGS * (MAX_KEY + MAX_VALUE + 2) + 1)

static char *model;
static char *phase;
static char limit_uj[24];           /* decimal µJ, empty when no --energy-limit */
static char tags[TAGS_BUF];
static int ntags;

static const char *const phases[] = {"training", "inference", "other", NULL};

/* Values travel as "k=v;k=v" and end up in JSON: no ';', no control characters. */
static int valid_value(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n > max)
        return 0;
    for (; *s; s++)
        if (*s == ';' || iscntrl((unsigned char)*s))
            return 0;
    return 1;
}

static int valid_key(const char *s, size_t n)
{
    if (n == 0 || n > MAX_KEY)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return 0;
    return 1;
}

static int model_cb(int val, const char *optarg, int remote)
{
    if (!optarg || !*optarg || !valid_value(optarg, MAX_VALUE)) {
        slurm_error("--energy-model: invalid value '%s': 1-%d characters, no ';' or control "
                    "characters", optarg ? optarg : "", MAX_VALUE);
        return -1;
    }
    free(model);
    model = strdup(optarg);
    return 0;
}

static int phase_cb(int val, const char *optarg, int remote)
{
    for (int i = 0; phases[i]; i++) {
        if (optarg && strcmp(optarg, phases[i]) == 0) {
            free(phase);
            phase = strdup(optarg);
            return 0;
        }
    }
    slurm_error("--energy-phase: invalid value '%s': use training, inference or other",
                optarg ? optarg : "");
    return -1;
}

static int tag_cb(int val, const char *optarg, int remote)
{
    const char *eq = optarg ? strchr(optarg, '=') : NULL;
    if (!eq || !valid_key(optarg, (size_t)(eq - optarg)) || !valid_value(eq + 1, MAX_VALUE)) {
        slurm_error("--energy-tag: invalid value '%s': use KEY=VALUE, KEY of 1-%d letters, "
                    "digits or _.- and VALUE of at most %d characters without ';'",
                    optarg ? optarg : "", MAX_KEY, MAX_VALUE);
        return -1;
    }
    if (remote) {           /* slurmstepd gets the last value only: keep just that one */
        snprintf(tags, sizeof(tags), "%s", optarg);
        ntags = 1;
        return 0;
    }
    if (ntags >= MAX_TAGS) {
        slurm_error("--energy-tag: at most %d tags", MAX_TAGS);
        return -1;
    }
    size_t used = strlen(tags);
    snprintf(tags + used, sizeof(tags) - used, "%s%s", used ? ";" : "", optarg);
    ntags++;
    return 0;
}

/* 1 GWh: a job past it is a typo (a 1 MW job for 1000 h), and it keeps every sum of
 * limits far inside a signed 64-bit µJ counter. */
#define MAX_LIMIT_UJ 3600000000000000000ULL
#define MIN_LIMIT_UJ 1000000ULL     /* 1 J */

static const struct {
    const char *name;
    unsigned long long uj;
} units[] = {
    {"j", 1000000ULL}, {"kj", 1000000000ULL}, {"mj", 1000000000000ULL},
    {"wh", 3600000000ULL}, {"kwh", 3600000000000ULL}, {"mwh", 3600000000000000ULL},
    {NULL, 0},
};

/* Parse "2.5kWh" (digits, an optional fraction, an optional space, a unit) into µJ,
 * exactly: the decimal is read as an integer mantissa and a power of ten, so 2.5 kWh is
 * 25 × 3.6e12 / 10 µJ with no float rounding. Case-insensitive units, as users type them
 * (so "mwh" is MWh: there is no milliwatt-hour). 0 for anything else. */
static unsigned long long parse_limit_uj(const char *s)
{
    unsigned __int128 mantissa = 0, scale = 1;
    int int_digits = 0, frac_digits = 0;
    char unit[4];
    size_t n = 0;

    for (; isdigit((unsigned char)*s); s++, int_digits++) {
        if (int_digits >= 12)
            return 0;
        mantissa = mantissa * 10 + (unsigned)(*s - '0');
    }
    if (*s == '.') {
        for (s++; isdigit((unsigned char)*s); s++, frac_digits++) {
            if (frac_digits >= 9)
                return 0;
            mantissa = mantissa * 10 + (unsigned)(*s - '0');
            scale *= 10;
        }
        if (frac_digits == 0)
            return 0;
    }
    if (int_digits == 0)
        return 0;
    if (*s == ' ')
        s++;
    for (; *s && n < sizeof(unit) - 1; s++, n++)
        unit[n] = (char)tolower((unsigned char)*s);
    if (*s)
        return 0;
    unit[n] = '\0';
    for (int i = 0; units[i].name; i++) {
        if (strcmp(unit, units[i].name) == 0) {
            /* < 10^21 × 3.6e15: inside 128 bits. Rounded to the nearest µJ. */
            unsigned __int128 uj = (mantissa * units[i].uj + scale / 2) / scale;
            return uj > MAX_LIMIT_UJ ? 0 : (unsigned long long)uj;
        }
    }
    return 0;
}

static int limit_cb(int val, const char *optarg, int remote)
{
    unsigned long long uj = optarg ? parse_limit_uj(optarg) : 0;
    if (uj < MIN_LIMIT_UJ) {
        slurm_error("--energy-limit: invalid value '%s': use a number and a unit, e.g. "
                    "2.5kWh, 800Wh or 500kJ (units Wh, kWh, MWh, J, kJ, MJ), from 1 J to "
                    "1000 MWh", optarg ? optarg : "");
        return -1;
    }
    snprintf(limit_uj, sizeof(limit_uj), "%llu", uj);
    return 0;
}

static struct spank_option options[] = {
    {"energy-model", "NAME", "Model this job trains or serves (jobenergy tag 'model')", 1, 0,
     model_cb},
    {"energy-phase", "PHASE", "Job phase for energy reports: training, inference or other", 1,
     0, phase_cb},
    {"energy-tag", "KEY=VALUE", "Tag the job's energy record (repeatable)", 1, 0, tag_cb},
    {"energy-limit", "ENERGY", "Energy limit of the job, e.g. 2.5kWh (units Wh, kWh, MWh, "
     "J, kJ, MJ): warned at 90 %, cancelled at 100 %", 1, 0, limit_cb},
    SPANK_OPTIONS_TABLE_END
};

/* Registered here rather than through a global spank_options table: sbatch (allocator
 * context) in Slurm 22.05 ignored the table and refused the options. */
int slurm_spank_init(spank_t sp, int ac, char **av)
{
    for (struct spank_option *opt = options; opt->name; opt++) {
        spank_err_t rc = spank_option_register(sp, opt);
        if (rc != ESPANK_SUCCESS)
            slurm_error("jobenergy: cannot register --%s: %s", opt->name, spank_strerror(rc));
    }
    return 0;
}

static void export_all(spank_t sp, int job_control)
{
    const char *names[] = {"ENERGY_MODEL", "ENERGY_PHASE", "ENERGY_TAGS", "ENERGY_LIMIT_UJ"};
    const char *values[] = {model, phase, ntags ? tags : NULL, limit_uj[0] ? limit_uj : NULL};
    for (int i = 0; i < 4; i++) {
        if (!values[i])
            continue;
        if (job_control) {
            if (spank_job_control_setenv(sp, names[i], values[i], 1) != ESPANK_SUCCESS)
                slurm_debug("jobenergy: spank_job_control_setenv %s failed", names[i]);
            setenv(names[i], values[i], 1);     /* propagated to the job by --export=ALL */
        } else {
            spank_setenv(sp, names[i], values[i], 0);   /* keep what the user exported */
        }
    }
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    spank_context_t ctx = spank_context();
    if (ctx == S_CTX_LOCAL || ctx == S_CTX_ALLOCATOR)
        export_all(sp, 1);
    return 0;
}

int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
    export_all(sp, 0);
    return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
    free(model);
    free(phase);
    model = phase = NULL;
    return 0;
}
