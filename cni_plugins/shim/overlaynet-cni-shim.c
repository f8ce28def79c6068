/*
 * overlaynet's compiled CNI plugin front: the fast path of overlaynet-flannel, -calico and -ipam.
 *
 * Built by scripts/setup into cni_plugins/bin/ under the three plugin names. A CNI plugin is
 * exec'd once per pod; a Python interpreter costs 20-50 ms to start before any work, so this
 * program does only what the thin Python plugin (overlaynet/cni/skel.py) does on its fast
 * path, in C: it reads stdin and the environment, finds the configuration's top-level
 * "agentSocket", sends the request to the cluster's agent as one JSON line
 *     {"op":"cni","plugin":NAME,"env":{...},"pid":PID,"stdin":"..."}
 * and prints the agent's answer ({"ok":true,"stdout","exit_code","stderr"}) as a plugin would:
 * stdout to stdout, stderr to stderr, exit_code as its status. The agent reaches the runtime's
 * network namespace through /proc/PID/ns/net, so this process waits for the answer.
 *
 * Everything else -- VERSION, a configuration without agentSocket, an agent that is not there
 * or refuses, input that is not valid UTF-8 -- is the Python plugin's to answer: this program
 * then execs cni_plugins/NAME (beside bin/) with the same arguments, environment and stdin, so
 * the answer is exactly the one the Python plugin gives. Only once the request was sent is an
 * unreadable answer reported here, as CNI error 11 (try again), as the Python plugin does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_STDIN (4 << 20)  /* larger configurations go to the Python plugin */
#define REPLY_TIMEOUT_S 300
#define CONNECT_TIMEOUT_S 1

extern char **environ;

struct buf { char *data; size_t len, cap; };

static void put(struct buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) { perror("overlaynet cni shim"); exit(1); }
        b->data = grown; b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* Whether s[0..n) is valid UTF-8 (shortest forms, no surrogates): what Python decodes the same. */
static int valid_utf8(const unsigned char *s, size_t n) {
    static const unsigned smallest[4] = {0, 0x80, 0x800, 0x10000};
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t extra;
        unsigned cp;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) { extra = 1; cp = c & 0x1Fu; }
        else if ((c & 0xF0) == 0xE0) { extra = 2; cp = c & 0x0Fu; }
        else if ((c & 0xF8) == 0xF0) { extra = 3; cp = c & 0x07u; }
        else return 0;
        if (i + extra >= n) return 0;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3Fu);
        }
        if (cp < smallest[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return 0;
        i += extra + 1;
    }
    return 1;
}

/* s as a JSON string literal. */
static void put_json_string(struct buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { char e[2] = {'\\', (char)c}; put(b, e, 2); }
        else if (c < 0x20 || c == 0x7F) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(b, e, 6);
        } else put(b, (const char *)&c, 1);
    }
    put(b, "\"", 1);
}

/* The string value of top-level-looking key `"key":"` in json, decoded, or NULL; only plain
 * values (no escapes) are taken: anything subtler is the Python plugin's to read. */
static char *plain_value(const char *json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    const char *at = strstr(json, pattern);
    if (!at) return NULL;
    at += strlen(pattern);
    while (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r') at++;
    if (*at++ != ':') return NULL;
    while (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r') at++;
    if (*at++ != '"') return NULL;
    const char *end = at;
    while (*end && *end != '"' && *end != '\\') end++;
    if (*end != '"' || end == at) return NULL;
    return strndup(at, (size_t)(end - at));
}

static void put_utf8(struct buf *b, unsigned cp) {
    char out[4];
    if (cp >= 0xDC80 && cp <= 0xDCFF) { out[0] = (char)(cp - 0xDC00); put(b, out, 1); return; } /* surrogateescape */
    if (cp < 0x80) { out[0] = (char)cp; put(b, out, 1); }
    else if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 63)); put(b, out, 2); }
    else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 63)); out[2] = (char)(0x80 | (cp & 63));
        put(b, out, 3);
    } else {
        out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 63));
        out[2] = (char)(0x80 | ((cp >> 6) & 63)); out[3] = (char)(0x80 | (cp & 63));
        put(b, out, 4);
    }
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

/* Decode the JSON string that starts at s (just after its opening quote) into b; 0 if malformed. */
static int decode_string(const char *s, struct buf *b) {
    puts_(b, "");
    while (*s && *s != '"') {
        if (*s != '\\') { put(b, s++, 1); continue; }
        s++;
        switch (*s) {
        case '"': case '\\': case '/': put(b, s, 1); s++; break;
        case 'b': put(b, "\b", 1); s++; break;
        case 'f': put(b, "\f", 1); s++; break;
        case 'n': put(b, "\n", 1); s++; break;
        case 'r': put(b, "\r", 1); s++; break;
        case 't': put(b, "\t", 1); s++; break;
        case 'u': {
            unsigned cp, low;
            if (!hex4(s + 1, &cp)) return 0;
            s += 5;
            if (cp >= 0xD800 && cp < 0xDC00 && s[0] == '\\' && s[1] == 'u' && hex4(s + 2, &low)
                    && low >= 0xDC00 && low < 0xE000) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                s += 6;
            }
            put_utf8(b, cp);
            break;
        }
        default: return 0;
        }
    }
    return *s == '"';
}

/* The string value of key in the agent's one-line reply, decoded into b; 0 if absent. */
static int reply_string(const char *reply, const char *key, struct buf *b) {
    char pattern[32];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *at = strstr(reply, pattern);
    return at && decode_string(at + strlen(pattern), b);
}

/* Exec the Python plugin of the same name beside bin/, stdin restored from memory. */
static void fall_back(char **argv, const char *self, const char *name, const char *input, size_t len) {
    char dir[PATH_MAX], target[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", self);
    snprintf(target, sizeof target, "%s/../%s", dirname(dir), name);
    int fd = memfd_create("cni-stdin", MFD_CLOEXEC);
    if (fd < 0 || write(fd, input, len) != (ssize_t)len || lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
        perror("overlaynet cni shim: stdin for the Python plugin");
        exit(1);
    }
    argv[0] = target;
    execve(target, argv, environ);
    fprintf(stderr, "overlaynet cni shim: cannot exec %s: %s\n", target, strerror(errno));
    printf("{\"cniVersion\": \"1.0.0\", \"code\": 999, \"msg\": \"%s: the Python plugin is missing\"}\n", name);
    exit(1);
}

int main(int argc, char **argv) {
    (void)argc;
    char self[PATH_MAX];
    ssize_t self_len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (self_len <= 0) { perror("overlaynet cni shim: /proc/self/exe"); return 1; }
    self[self_len] = '\0';
    char name_buf[PATH_MAX];
    snprintf(name_buf, sizeof name_buf, "%s", argv[0]);
    const char *name = basename(name_buf);

    struct buf input = {0};
    char chunk[65536];
    ssize_t got;
    while ((got = read(0, chunk, sizeof chunk)) > 0)  /* all of it: a fall-back hands it on whole */
        put(&input, chunk, (size_t)got);
    if (!input.data) puts_(&input, "");

    const char *command = getenv("CNI_COMMAND");
    int agent_command = command && (!strcmp(command, "ADD") || !strcmp(command, "DEL") || !strcmp(command, "CHECK")
                                    || !strcmp(command, "STATUS") || !strcmp(command, "GC"));
    char *socket_path = agent_command && input.len <= MAX_STDIN ? plain_value(input.data, "agentSocket") : NULL;
    if (!socket_path || strlen(socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)
            || memchr(input.data, '\0', input.len) || !valid_utf8((unsigned char *)input.data, input.len))
        fall_back(argv, self, name, input.data, input.len);

    struct buf request = {0};
    puts_(&request, "{\"op\":\"cni\",\"plugin\":");
    put_json_string(&request, name, strlen(name));
    puts_(&request, ",\"env\":{");
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || !valid_utf8((unsigned char *)*e, strlen(*e))) fall_back(argv, self, name, input.data, input.len);
        if (e != environ) puts_(&request, ",");
        put_json_string(&request, *e, (size_t)(eq - *e));
        puts_(&request, ":");
        put_json_string(&request, eq + 1, strlen(eq + 1));
    }
    char pid[32];
    snprintf(pid, sizeof pid, "},\"pid\":%d,\"stdin\":", (int)getpid());
    puts_(&request, pid);
    put_json_string(&request, input.data, input.len);
    puts_(&request, "}\n");

    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    snprintf(address.sun_path, sizeof address.sun_path, "%s", socket_path);
    struct timeval timeout = {.tv_sec = CONNECT_TIMEOUT_S};
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    if (sock < 0 || connect(sock, (struct sockaddr *)&address, sizeof address) != 0)
        fall_back(argv, self, name, input.data, input.len);  /* no agent: the plugin runs standalone */

    timeout.tv_sec = REPLY_TIMEOUT_S;
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    struct buf reply = {0};
    const char *problem = NULL;
    for (size_t sent = 0; sent < request.len;) {
        ssize_t n = send(sock, request.data + sent, request.len - sent, MSG_NOSIGNAL);
        if (n <= 0) { problem = strerror(errno); break; }
        sent += (size_t)n;
    }
    while (!problem && !(reply.data && strchr(reply.data, '\n'))) {
        ssize_t n = recv(sock, chunk, sizeof chunk, 0);
        if (n < 0) problem = errno == EAGAIN ? "timed out" : strerror(errno);
        else if (n == 0) problem = "the agent closed the connection";
        else put(&reply, chunk, (size_t)n);
    }
    close(sock);
    if (problem) {
        char *version = plain_value(input.data, "cniVersion");
        struct buf error = {0};
        puts_(&error, "{\"cniVersion\": ");
        put_json_string(&error, version ? version : "1.0.0", strlen(version ? version : "1.0.0"));
        puts_(&error, ", \"code\": 11, \"msg\": ");
        char msg[PATH_MAX + 64];
        snprintf(msg, sizeof msg, "the agent at %s did not answer the request", socket_path);
        put_json_string(&error, msg, strlen(msg));
        puts_(&error, ", \"details\": ");
        snprintf(msg, sizeof msg, "%s; the operation may be incomplete", problem);
        put_json_string(&error, msg, strlen(msg));
        puts_(&error, "}\n");
        fputs(error.data, stdout);
        return 1;
    }
    *strchr(reply.data, '\n') = '\0';
    struct buf out = {0}, err = {0};
    const char *code = strstr(reply.data, "\"exit_code\":");
    if (strncmp(reply.data, "{\"ok\":true", 10) != 0 || !code || !reply_string(reply.data, "stdout", &out))
        fall_back(argv, self, name, input.data, input.len);  /* refused before any work: the plugin says why */
    reply_string(reply.data, "stderr", &err);
    fwrite(out.data, 1, out.len, stdout);
    if (err.len) fwrite(err.data, 1, err.len, stderr);
    return atoi(code + strlen("\"exit_code\":"));
}
