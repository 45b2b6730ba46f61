/*
 * Simulated NVML: a libnvidia-ml.so.1 that the real nvidia-ml-py binding (pynvml) loads.
 *
 * Implements the C functions jobenergy's GPU sensor calls, with NVML's own signatures,
 * struct layouts and return codes (nvml.h; pynvml's ctypes Structures must match byte for
 * byte). The simulated machine is described by a text file whose path is in the environment
 * variable JOBENERGY_NVML_SIM_STATE. The file is re-read whenever its inode, size or mtime
 * changes, so a test or simulator can evolve it (write a temp file, rename it over) while the
 * process under test keeps running. Format, one record per line, `key=value` tokens, values
 * with spaces in double quotes, `#` starts a comment (sim/nvml/state.py writes it):
 *
 *   driver version=580.105.08
 *   device index=0 uuid=GPU-... minor=0 name="NVIDIA H100 80GB HBM3" energy_mj=123
 *          power_mw=68920 energy=supported|not_supported status=ok|lost mig=0|1
 *   process device=0 pid=1234 used_mem=1048576 gi=1 ci=0 sm_util=80 mem_util=10
 *   mig device=0 gi=1 slices=3
 *   error function=nvmlDeviceGetProcessUtilization code=FUNCTION_NOT_FOUND
 *
 * A process without sm_util has no utilisation sample. An `error` line makes that function
 * return the code (a name or a number) for every call. Building with -DOMIT_<function> leaves
 * the symbol out entirely, as an older driver would (pynvml raises NVMLError_FunctionNotFound).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

typedef int nvmlReturn_t;
typedef struct sim_handle *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NO_PERMISSION 4
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_LIBRARY_NOT_FOUND 12
#define NVML_ERROR_FUNCTION_NOT_FOUND 13
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_UNKNOWN 999

#define MAX_DEVICES 64
#define MAX_PROCS 1024
#define MAX_MIG 8
#define MAX_ERRORS 32

/* nvml.h: nvmlProcessInfo_v2_t (== v3 layout): 4 + pad 4 + 8 + 4 + 4 = 24 bytes. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

/* nvml.h: nvmlProcessUtilizationSample_t: 4 + pad 4 + 8 + 4*4 = 32 bytes. */
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

/* nvml.h: nvmlDeviceAttributes_t. */
typedef struct {
    unsigned int multiprocessorCount;
    unsigned int sharedCopyEngineCount;
    unsigned int sharedDecoderCount;
    unsigned int sharedEncoderCount;
    unsigned int sharedJpegCount;
    unsigned int sharedOfaCount;
    unsigned int gpuInstanceSliceCount;
    unsigned int computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} nvmlDeviceAttributes_t;

struct sim_handle { int device; int mig; };  /* mig = -1 for the physical device */

typedef struct {
    int present, lost, energy_supported, mig_mode;
    unsigned int minor;
    unsigned long long energy_mj;
    unsigned int power_mw;
    char uuid[96], name[96];
    int n_mig;
    unsigned int mig_gi[MAX_MIG], mig_slices[MAX_MIG];
} sim_device;

typedef struct {
    int device, has_util;
    unsigned int pid, gi, ci, sm_util, mem_util;
    unsigned long long used_mem;
} sim_process;

typedef struct { char function[64]; int code; } sim_error;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
static char driver_version[80] = "580.105.08";
static sim_device devices[MAX_DEVICES];
static int device_count;
static sim_process procs[MAX_PROCS];
static int proc_count;
static sim_error errors[MAX_ERRORS];
static int error_count;
static struct sim_handle handles[MAX_DEVICES];
static struct sim_handle mig_handles[MAX_DEVICES][MAX_MIG];
static char loaded_path[4096];
static struct stat loaded_stat;
static int loaded_ok;

static const struct { const char *name; int code; } codes[] = {
    {"SUCCESS", 0}, {"UNINITIALIZED", 1}, {"INVALID_ARGUMENT", 2}, {"NOT_SUPPORTED", 3},
    {"NO_PERMISSION", 4}, {"NOT_FOUND", 6}, {"INSUFFICIENT_SIZE", 7}, {"DRIVER_NOT_LOADED", 9},
    {"TIMEOUT", 10}, {"LIBRARY_NOT_FOUND", 12}, {"FUNCTION_NOT_FOUND", 13},
    {"GPU_IS_LOST", 15}, {"RESET_REQUIRED", 16}, {"NO_DATA", 21}, {"UNKNOWN", 999},
};

static int parse_code(const char *s) {
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(s, codes[i].name) == 0) return codes[i].code;
    return atoi(s);
}

/* Next `key=value` token of *p; returns 0 at end of line. */
static int next_token(char **p, char **key, char **value) {
    char *s = *p;
    while (*s == ' ' || *s == '\t') s++;
    if (*s == '\0' || *s == '\n' || *s == '#') return 0;
    *key = s;
    while (*s && *s != '=' && *s != ' ' && *s != '\n') s++;
    if (*s != '=') { *p = s; *value = s; return 1; }
    *s++ = '\0';
    if (*s == '"') {
        *value = ++s;
        while (*s && *s != '"' && *s != '\n') s++;
    } else {
        *value = s;
        while (*s && *s != ' ' && *s != '\t' && *s != '\n') s++;
    }
    if (*s) *s++ = '\0';
    *p = s;
    return 1;
}

static void parse_line(char *line) {
    char *kind = line, *p, *key, *value;
    while (*kind == ' ' || *kind == '\t') kind++;
    if (*kind == '#' || *kind == '\n' || *kind == '\0') return;
    p = kind;
    while (*p && *p != ' ' && *p != '\n') p++;
    if (*p) *p++ = '\0';
    if (strcmp(kind, "device") == 0) {
        sim_device d;
        int index = -1;
        memset(&d, 0, sizeof d);
        d.present = 1;
        d.energy_supported = 1;
        while (next_token(&p, &key, &value)) {
            if (!strcmp(key, "index")) index = atoi(value);
            else if (!strcmp(key, "uuid")) snprintf(d.uuid, sizeof d.uuid, "%s", value);
            else if (!strcmp(key, "name")) snprintf(d.name, sizeof d.name, "%s", value);
            else if (!strcmp(key, "minor")) d.minor = (unsigned)strtoul(value, NULL, 10);
            else if (!strcmp(key, "energy_mj")) d.energy_mj = strtoull(value, NULL, 10);
            else if (!strcmp(key, "power_mw")) d.power_mw = (unsigned)strtoul(value, NULL, 10);
            else if (!strcmp(key, "energy")) d.energy_supported = strcmp(value, "not_supported") != 0;
            else if (!strcmp(key, "status")) d.lost = strcmp(value, "lost") == 0;
            else if (!strcmp(key, "mig")) d.mig_mode = atoi(value);
        }
        if (index >= 0 && index < MAX_DEVICES) {
            devices[index] = d;
            if (index + 1 > device_count) device_count = index + 1;
        }
    } else if (strcmp(kind, "process") == 0 && proc_count < MAX_PROCS) {
        sim_process *q = &procs[proc_count];
        memset(q, 0, sizeof *q);
        q->gi = q->ci = 0xFFFFFFFFu;  /* NVML's "not in a MIG instance" */
        while (next_token(&p, &key, &value)) {
            if (!strcmp(key, "device")) q->device = atoi(value);
            else if (!strcmp(key, "pid")) q->pid = (unsigned)strtoul(value, NULL, 10);
            else if (!strcmp(key, "used_mem")) q->used_mem = strtoull(value, NULL, 10);
            else if (!strcmp(key, "gi")) q->gi = (unsigned)strtoul(value, NULL, 10);
            else if (!strcmp(key, "ci")) q->ci = (unsigned)strtoul(value, NULL, 10);
            else if (!strcmp(key, "sm_util")) { q->sm_util = (unsigned)atoi(value); q->has_util = 1; }
            else if (!strcmp(key, "mem_util")) q->mem_util = (unsigned)atoi(value);
        }
        proc_count++;
    } else if (strcmp(kind, "mig") == 0) {
        int dev = -1;
        unsigned gi = 0, slices = 1;
        while (next_token(&p, &key, &value)) {
            if (!strcmp(key, "device")) dev = atoi(value);
            else if (!strcmp(key, "gi")) gi = (unsigned)strtoul(value, NULL, 10);
            else if (!strcmp(key, "slices")) slices = (unsigned)strtoul(value, NULL, 10);
        }
        if (dev >= 0 && dev < MAX_DEVICES && devices[dev].n_mig < MAX_MIG) {
            devices[dev].mig_gi[devices[dev].n_mig] = gi;
            devices[dev].mig_slices[devices[dev].n_mig++] = slices;
        }
    } else if (strcmp(kind, "error") == 0 && error_count < MAX_ERRORS) {
        sim_error *e = &errors[error_count];
        e->function[0] = '\0';
        e->code = NVML_ERROR_UNKNOWN;
        while (next_token(&p, &key, &value)) {
            if (!strcmp(key, "function")) snprintf(e->function, sizeof e->function, "%s", value);
            else if (!strcmp(key, "code")) e->code = parse_code(value);
        }
        error_count++;
    } else if (strcmp(kind, "driver") == 0) {
        while (next_token(&p, &key, &value))
            if (!strcmp(key, "version")) snprintf(driver_version, sizeof driver_version, "%s", value);
    }
}

/* Re-read the state file if it changed; called with the lock held. */
static void refresh(void) {
    const char *path = getenv("JOBENERGY_NVML_SIM_STATE");
    struct stat st;
    FILE *f;
    char line[1024];
    if (path == NULL || stat(path, &st) != 0) {
        if (loaded_ok || loaded_path[0]) {
            device_count = proc_count = error_count = 0;
            loaded_ok = 0;
            loaded_path[0] = '\0';
        }
        return;
    }
    if (loaded_ok && strcmp(path, loaded_path) == 0 && st.st_ino == loaded_stat.st_ino &&
        st.st_size == loaded_stat.st_size && st.st_mtim.tv_sec == loaded_stat.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == loaded_stat.st_mtim.tv_nsec)
        return;
    f = fopen(path, "r");
    if (f == NULL) return;
    memset(devices, 0, sizeof devices);
    device_count = proc_count = error_count = 0;
    while (fgets(line, sizeof line, f)) parse_line(line);
    fclose(f);
    snprintf(loaded_path, sizeof loaded_path, "%s", path);
    loaded_stat = st;
    loaded_ok = 1;
}

static int injected(const char *function) {
    for (int i = 0; i < error_count; i++)
        if (strcmp(errors[i].function, function) == 0) return errors[i].code;
    return NVML_SUCCESS;
}

/* Common prologue: lock, refresh, injected error. */
#define ENTER(fn)                                    \
    int rc_;                                         \
    pthread_mutex_lock(&lock);                       \
    if (!initialized) { rc_ = NVML_ERROR_UNINITIALIZED; goto out; } \
    refresh();                                       \
    if ((rc_ = injected(fn)) != NVML_SUCCESS) goto out;
#define LEAVE(code) do { rc_ = (code); goto out; } while (0)
#define EXIT out: pthread_mutex_unlock(&lock); return rc_;

/* Resolve a handle to a present physical device (or its MIG parent); NULL on error. */
static sim_device *device_of(nvmlDevice_t h, int *rc) {
    if (h == NULL || h->device < 0 || h->device >= device_count || !devices[h->device].present) {
        *rc = NVML_ERROR_INVALID_ARGUMENT;
        return NULL;
    }
    if (devices[h->device].lost) { *rc = NVML_ERROR_GPU_IS_LOST; return NULL; }
    *rc = NVML_SUCCESS;
    return &devices[h->device];
}

#define DEVICE(d, h) sim_device *d = device_of(h, &rc_); if (d == NULL) goto out;

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    int rc_;
    (void)flags;
    pthread_mutex_lock(&lock);
    refresh();
    if ((rc_ = injected("nvmlInitWithFlags")) == NVML_SUCCESS) initialized++;
    goto out;
    EXIT
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    int rc_ = NVML_SUCCESS;
    pthread_mutex_lock(&lock);
    if (initialized > 0) initialized--; else rc_ = NVML_ERROR_UNINITIALIZED;
    goto out;
    EXIT
}

const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (codes[i].code == result) return codes[i].name;
    return "UNKNOWN";
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    ENTER("nvmlSystemGetDriverVersion")
    if (version == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (strlen(driver_version) + 1 > length) LEAVE(NVML_ERROR_INSUFFICIENT_SIZE);
    strcpy(version, driver_version);
    EXIT
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    ENTER("nvmlDeviceGetCount_v2")
    if (count == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned)device_count;
    EXIT
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    ENTER("nvmlDeviceGetHandleByIndex_v2")
    if (device == NULL || index >= (unsigned)device_count || !devices[index].present)
        LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (devices[index].lost) LEAVE(NVML_ERROR_GPU_IS_LOST);
    handles[index].device = (int)index;
    handles[index].mig = -1;
    *device = &handles[index];
    EXIT
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

static nvmlReturn_t copy_string(const char *src, char *dst, unsigned int length) {
    if (dst == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(dst, src);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    ENTER("nvmlDeviceGetUUID")
    DEVICE(d, device)
    LEAVE(copy_string(d->uuid, uuid, length));
    EXIT
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    ENTER("nvmlDeviceGetName")
    DEVICE(d, device)
    LEAVE(copy_string(d->name, name, length));
    EXIT
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minor) {
    ENTER("nvmlDeviceGetMinorNumber")
    DEVICE(d, device)
    if (minor == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *minor = d->minor;
    EXIT
}

#ifndef OMIT_nvmlDeviceGetTotalEnergyConsumption
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    ENTER("nvmlDeviceGetTotalEnergyConsumption")
    DEVICE(d, device)
    if (energy == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (!d->energy_supported) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    *energy = d->energy_mj;
    EXIT
}
#endif

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    ENTER("nvmlDeviceGetPowerUsage")
    DEVICE(d, device)
    if (power == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *power = d->power_mw;
    EXIT
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    unsigned int n = 0, i = 0;
    ENTER("nvmlDeviceGetComputeRunningProcesses_v3")
    DEVICE(d, device)
    (void)d;
    if (count == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    for (int k = 0; k < proc_count; k++) n += procs[k].device == device->device;
    if (n == 0) { *count = 0; LEAVE(NVML_SUCCESS); }
    if (infos == NULL || *count < n) { *count = n; LEAVE(NVML_ERROR_INSUFFICIENT_SIZE); }
    for (int k = 0; k < proc_count; k++) {
        if (procs[k].device != device->device) continue;
        infos[i].pid = procs[k].pid;
        infos[i].usedGpuMemory = procs[k].used_mem;
        infos[i].gpuInstanceId = procs[k].gi;
        infos[i].computeInstanceId = procs[k].ci;
        i++;
    }
    *count = n;
    EXIT
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    return nvmlDeviceGetComputeRunningProcesses_v3(device, count, infos);
}

#ifndef OMIT_nvmlDeviceGetProcessUtilization
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                             nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *count,
                                             unsigned long long lastSeenTimeStamp) {
    unsigned int n = 0, i = 0;
    struct timespec ts;
    unsigned long long now_us;
    ENTER("nvmlDeviceGetProcessUtilization")
    DEVICE(d, device)
    (void)d;
    if (count == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    clock_gettime(CLOCK_REALTIME, &ts);
    now_us = (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000;
    for (int k = 0; k < proc_count; k++)
        n += procs[k].device == device->device && procs[k].has_util;
    /* NVML answers NOT_FOUND when no sample is newer than lastSeenTimeStamp. */
    if (n == 0 || lastSeenTimeStamp >= now_us) LEAVE(NVML_ERROR_NOT_FOUND);
    if (utilization == NULL || *count < n) { *count = n; LEAVE(NVML_ERROR_INSUFFICIENT_SIZE); }
    for (int k = 0; k < proc_count; k++) {
        if (procs[k].device != device->device || !procs[k].has_util) continue;
        memset(&utilization[i], 0, sizeof utilization[i]);
        utilization[i].pid = procs[k].pid;
        utilization[i].timeStamp = now_us;
        utilization[i].smUtil = procs[k].sm_util;
        utilization[i].memUtil = procs[k].mem_util;
        i++;
    }
    *count = n;
    EXIT
}
#endif

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    ENTER("nvmlDeviceGetMigMode")
    DEVICE(d, device)
    if (current == NULL || pending == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *current = *pending = (unsigned)d->mig_mode;
    EXIT
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    ENTER("nvmlDeviceGetMaxMigDeviceCount")
    DEVICE(d, device)
    if (count == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *count = d->mig_mode ? MAX_MIG : 0;
    EXIT
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *mig) {
    ENTER("nvmlDeviceGetMigDeviceHandleByIndex")
    DEVICE(d, device)
    if (mig == NULL || index >= MAX_MIG) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (!d->mig_mode || (int)index >= d->n_mig) LEAVE(NVML_ERROR_NOT_FOUND);
    mig_handles[device->device][index].device = device->device;
    mig_handles[device->device][index].mig = (int)index;
    *mig = &mig_handles[device->device][index];
    EXIT
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    ENTER("nvmlDeviceGetGpuInstanceId")
    DEVICE(d, device)
    if (id == NULL || device->mig < 0) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *id = d->mig_gi[device->mig];
    EXIT
}

nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t device, nvmlDeviceAttributes_t *attrs) {
    ENTER("nvmlDeviceGetAttributes_v2")
    DEVICE(d, device)
    if (attrs == NULL) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (device->mig < 0) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    memset(attrs, 0, sizeof *attrs);
    attrs->gpuInstanceSliceCount = d->mig_slices[device->mig];
    attrs->computeInstanceSliceCount = d->mig_slices[device->mig];
    EXIT
}
