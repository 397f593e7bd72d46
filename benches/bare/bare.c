/* Minimal hand-written echo servers: the "bare" side of benches/bare.rs.
 *
 *   bare fork|fork-pidfd|fork-notes|prefork N|thread|epoll [N]
 *
 * fork: a child per connection, reaped by the kernel (SIGCHLD ignored).
 * fork-pidfd, fork-notes: the same, reaped as a framework that must not
 * touch other children's exits has to: by a pidfd per child polled with
 * the listener, or by the child's pid written to one shared pipe just
 * before it exits (what the forking strategy does). Not in the bench's
 * table; they price the two ways of reaping (docs/server.md, "Exit
 * notes"). prefork N: N workers blocking in accept.
 * thread: a detached thread per connection. epoll: one thread, one epoll
 * instance, the listener and every connection in it. epoll N: N threads,
 * each with its own epoll instance holding the shared listening socket
 * (registered with EPOLLEXCLUSIVE, so a new connection wakes one thread,
 * not all) and the connections that thread accepted: the usual shape of a
 * hand-written multi-threaded epoll server, and the like-with-like
 * counterpart of the async strategy's thread-per-core workers.
 *
 * Each listens on 127.0.0.1 port 0 (backlog 4096, SO_REUSEADDR), prints
 * "listening on tcp://127.0.0.1:PORT" on stdout, and echoes every byte it
 * reads until the peer closes. No logging, no timeouts, no limits: the
 * least a server of each model must do, so the ratio shows what the
 * framework costs. SIGTERM ends it (and, for prefork, its workers).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int listen_any(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (fd < 0) { perror("socket"); exit(1); }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    if (listen(fd, 4096) < 0) { perror("listen"); exit(1); }
    getsockname(fd, (struct sockaddr *)&a, &len);
    printf("listening on tcp://127.0.0.1:%d\n", ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

/* Echo until EOF or an error, then close. */
static void echo(int fd) {
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf), off = 0;
        if (n <= 0) break;
        while (off < n) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w <= 0) goto out;
            off += w;
        }
    }
out:
    close(fd);
}

/* Forks a child that echoes on `c` and exits; the parent closes `c`. */
static pid_t fork_echo(int lfd, int c) {
    pid_t pid = fork();
    if (pid == 0) {
        close(lfd);
        echo(c);
        _exit(0);
    }
    close(c);
    return pid;
}

static void serve_fork(int lfd) {
    signal(SIGCHLD, SIG_IGN); /* the kernel reaps the children */
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) fork_echo(lfd, c);
    }
}

/* fork per connection; the parent polls the listener and a pidfd per
 * child, and waits for each child whose pidfd fires. */
static void serve_fork_pidfd(int lfd) {
    static struct pollfd pfd[1 + 4096];
    static pid_t pids[1 + 4096];
    int n = 0;
    fcntl(lfd, F_SETFL, O_NONBLOCK);
    for (;;) {
        pfd[0].fd = lfd;
        pfd[0].events = POLLIN;
        if (poll(pfd, n + 1, -1) < 0) continue;
        for (int i = 1; i <= n;) {
            if (pfd[i].revents) {
                waitpid(pids[i], NULL, 0);
                close(pfd[i].fd);
                pfd[i] = pfd[n];
                pids[i] = pids[n];
                n--;
            } else {
                i++;
            }
        }
        while (pfd[0].revents && n < 4096) {
            int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0) break;
            pid_t pid = fork_echo(lfd, c);
            n++;
            pfd[n].fd = (int)syscall(SYS_pidfd_open, pid, 0);
            pfd[n].events = POLLIN;
            pfd[n].revents = 0;
            pids[n] = pid;
        }
    }
}

/* fork per connection; each child writes its pid to one shared pipe as its
 * last act, and the parent waits for exactly those pids (asking again on
 * the next turn, 1 ms later at most, for one still exiting). */
static void serve_fork_notes(int lfd) {
    static pid_t pending[4096 + 256];
    int np = 0, notes[2];
    if (pipe2(notes, O_CLOEXEC | O_NONBLOCK) < 0) { perror("pipe2"); exit(1); }
    fcntl(lfd, F_SETFL, O_NONBLOCK);
    for (;;) {
        struct pollfd pfd[2] = {{.fd = lfd, .events = POLLIN}, {.fd = notes[0], .events = POLLIN}};
        if (poll(pfd, 2, np ? 1 : -1) < 0) continue;
        if (pfd[1].revents) {
            pid_t got[256];
            ssize_t r = read(notes[0], got, sizeof got);
            for (ssize_t i = 0; r > 0 && i < r / (ssize_t)sizeof(pid_t) && np < 4096 + 256; i++)
                pending[np++] = got[i];
        }
        for (int i = 0; i < np;) {
            if (waitpid(pending[i], NULL, WNOHANG) > 0) pending[i] = pending[--np];
            else i++;
        }
        while (pfd[0].revents) {
            int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0) break;
            pid_t pid = fork();
            if (pid == 0) {
                close(lfd);
                close(notes[0]);
                echo(c);
                pid_t me = getpid();
                if (write(notes[1], &me, sizeof me) < 0) _exit(1);
                _exit(0);
            }
            close(c);
        }
    }
}

static void serve_prefork(int lfd, int n) {
    pid_t *kids = calloc(n, sizeof *kids);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;) {
                int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (c >= 0) echo(c);
            }
        }
        kids[i] = pid;
    }
    sigset_t set;
    int sig;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sigwait(&set, &sig);
    for (int i = 0; i < n; i++) kill(kids[i], SIGKILL);
    for (int i = 0; i < n; i++) waitpid(kids[i], NULL, 0);
    exit(0);
}

static void *thread_main(void *arg) {
    echo((int)(long)arg);
    return NULL;
}

static void serve_thread(int lfd) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        pthread_t t;
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        if (pthread_create(&t, &attr, thread_main, (void *)(long)c) != 0) close(c);
    }
}

/* One epoll loop: the listener (EPOLLEXCLUSIVE when `exclusive`, i.e.
 * several loops share it) and the connections this loop accepted. */
static void serve_epoll(int lfd, int exclusive) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | (exclusive ? EPOLLEXCLUSIVE : 0), .data.fd = lfd},
                       evs[256];
    char *buf = malloc(65536);
    if (ep < 0 || !buf || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) { perror("epoll"); exit(1); }
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                    if (c < 0) break;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, 65536);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close(fd); /* also leaves the epoll set */
                continue;
            }
            /* Echo replies are small; a client that stops reading is not
             * part of this benchmark, so a short write just closes. */
            if (write(fd, buf, r) != r) close(fd);
        }
    }
}

static void *epoll_thread(void *arg) {
    serve_epoll((int)(long)arg, 1);
    return NULL;
}

/* N epoll loops on N threads sharing the listener; the main thread waits. */
static void serve_epoll_threads(int lfd, int n) {
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, epoll_thread, (void *)(long)lfd) != 0) { perror("pthread_create"); exit(1); }
    }
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bare fork|fork-pidfd|fork-notes|prefork N|thread|epoll [N]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_any();
    if (!strcmp(argv[1], "fork")) serve_fork(lfd);
    else if (!strcmp(argv[1], "fork-pidfd")) serve_fork_pidfd(lfd);
    else if (!strcmp(argv[1], "fork-notes")) serve_fork_notes(lfd);
    else if (!strcmp(argv[1], "prefork")) serve_prefork(lfd, argc > 2 ? atoi(argv[2]) : 4);
    else if (!strcmp(argv[1], "thread")) serve_thread(lfd);
    else if (!strcmp(argv[1], "epoll")) {
        fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
        if (argc > 2) serve_epoll_threads(lfd, atoi(argv[2]) > 0 ? atoi(argv[2]) : 1);
        else serve_epoll(lfd, 0);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    return 0;
}
