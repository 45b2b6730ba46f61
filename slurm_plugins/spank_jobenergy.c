/*
 * spank_jobenergy: energy tags for Slurm jobs (SPANK plugin, spank(7)).
 *
 *   --energy-model=NAME                   model the job trains or serves
 *   --energy-phase=training|inference|other
 *   --energy-tag=KEY=VALUE                free tag, repeatable (at most MAX_TAGS)
 *
 * Where the values go:
 *   - the job control environment (spank_job_control_setenv): the Prolog, Epilog,
 *     PrologSlurmctld and EpilogSlurmctld see SPANK_ENERGY_MODEL, SPANK_ENERGY_PHASE and
 *     SPANK_ENERGY_TAGS ("k1=v1;k2=v2"), and send them to the collector;
 *   - the job's own environment as ENERGY_MODEL, ENERGY_PHASE, ENERGY_TAGS: set in the
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

static struct spank_option options[] = {
    {"energy-model", "NAME", "Model this job trains or serves (jobenergy tag 'model')", 1, 0,
     model_cb},
    {"energy-phase", "PHASE", "Job phase for energy reports: training, inference or other", 1,
     0, phase_cb},
    {"energy-tag", "KEY=VALUE", "Tag the job's energy record (repeatable)", 1, 0, tag_cb},
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
    const char *names[] = {"ENERGY_MODEL", "ENERGY_PHASE", "ENERGY_TAGS"};
    const char *values[] = {model, phase, ntags ? tags : NULL};
    for (int i = 0; i < 3; i++) {
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
