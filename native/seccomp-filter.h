/*
 * Berth's seccomp filter: the system calls no agent or command needs that would hand a session
 * kernel code it could attack (new namespaces, mounts, keyrings, eBPF, io_uring, raw and packet
 * sockets, ...). docs/security.md ("Seccomp filter") gives the reason for every rule.
 *
 * Every process of a session runs under it: berth-bridge installs it before anything of the
 * sandbox's own runs, and berth-exec in each command right before exec (a process that enters a
 * sandbox with setns inherits no filter). Classic BPF written out here rather than built with
 * libseccomp: the static bridge keeps no dependencies, and the whole policy is in this file.
 *
 * A refused call fails with the error a program meets on a host without that feature or
 * privilege (EPERM, ENOSYS, EAFNOSUPPORT, EPROTONOSUPPORT), so programs that probe fall back.
 */
#ifndef BERTH_SECCOMP_FILTER_H
#define BERTH_SECCOMP_FILTER_H

#include <errno.h>
#include <sys/prctl.h>

#if defined(__x86_64__)

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <sched.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#define SECCOMP_NR offsetof(struct seccomp_data, nr)
#define SECCOMP_ARCH offsetof(struct seccomp_data, arch)
/* The low 32 bits of argument N (x86_64 is little-endian): the kernel reads int arguments, and
 * clone's flags, from those alone. */
#define SECCOMP_ARG(n) offsetof(struct seccomp_data, args[n])

#define LOAD(offset) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (offset))
#define KEEP_BITS(mask) BPF_STMT(BPF_ALU | BPF_AND | BPF_K, (mask))
#define IF_EQUAL(value, skip_if_true, skip_if_false) \
  BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (value), (skip_if_true), (skip_if_false))
#define RETURN(action) BPF_STMT(BPF_RET | BPF_K, (action))
#define FAIL_WITH(error) RETURN(SECCOMP_RET_ERRNO | (error))

/* How many instructions a list is, so that no jump over it is counted by hand. */
#define INSTRUCTIONS(...) (sizeof((struct sock_filter[]){__VA_ARGS__}) / sizeof(struct sock_filter))

/* With the syscall number loaded (and kept): system call NAME fails with ERROR. */
#define DENY(name, error) IF_EQUAL(__NR_##name, 0, 1), FAIL_WITH(error)

/* Runs the instructions for system call NAME only; any other skips past them. */
#define FOR_SYSCALL(name, ...) \
  LOAD(SECCOMP_NR), IF_EQUAL(__NR_##name, 0, INSTRUCTIONS(__VA_ARGS__)), __VA_ARGS__
#define FOR_SOCKET_FAMILY(family, ...)                                                    \
  FOR_SYSCALL(socket, LOAD(SECCOMP_ARG(0)), IF_EQUAL(family, 0, INSTRUCTIONS(__VA_ARGS__)), \
              __VA_ARGS__)

/* With an argument loaded: fails with ERROR if any of BITS is set in it. */
#define NONE_OF(bits, error) BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, (bits), 0, 1), FAIL_WITH(error)
/* With an argument loaded: fails with ERROR unless it is one of the values. */
#define ONE_OF_1(a, error) IF_EQUAL(a, 1, 0), FAIL_WITH(error)
#define ONE_OF_2(a, b, error) IF_EQUAL(a, 2, 0), ONE_OF_1(b, error)
#define ONE_OF_3(a, b, c, error) IF_EQUAL(a, 3, 0), ONE_OF_2(b, c, error)
#define ONE_OF_4(a, b, c, d, error) IF_EQUAL(a, 4, 0), ONE_OF_3(b, c, d, error)

#define NEW_NAMESPACE_FLAGS                                                                   \
  (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | \
   CLONE_NEWCGROUP | CLONE_NEWTIME)
/* The personality bits the kernel clears for setuid programs: no ASLR, the legacy memory
 * layout, readable-implies-executable, a mapped page zero. */
#define ASLR_WEAKENING_PERSONALITY 0x0740000u
#define PERSONALITY_QUERY 0xffffffffu
#define SOCKET_TYPE_MASK 0xf

static const struct sock_filter berth_seccomp_program[] = {
    /* Another architecture's numbers name other calls (i386 through int 0x80, or x32, whose
     * numbers carry bit 30): nothing here expects them, so the process ends. */
    LOAD(SECCOMP_ARCH),
    IF_EQUAL(AUDIT_ARCH_X86_64, 1, 0),
    RETURN(SECCOMP_RET_KILL_PROCESS),
    LOAD(SECCOMP_NR),
    BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 1),
    RETURN(SECCOMP_RET_KILL_PROCESS),

    /* Namespaces (clone and unshare are below). clone3's flags lie in memory, out of a filter's
     * reach: ENOSYS makes libc fall back to clone, whose flags are checked. */
    DENY(clone3, ENOSYS),
    DENY(setns, EPERM),
    /* Mounts, old and new API. */
    DENY(mount, EPERM),
    DENY(umount2, EPERM),
    DENY(pivot_root, EPERM),
    DENY(move_mount, EPERM),
    DENY(open_tree, EPERM),
    DENY(fsopen, EPERM),
    DENY(fsconfig, EPERM),
    DENY(fsmount, EPERM),
    DENY(fspick, EPERM),
    DENY(mount_setattr, EPERM),
    /* Kernel keyrings. */
    DENY(keyctl, EPERM),
    DENY(add_key, EPERM),
    DENY(request_key, EPERM),
    /* Kernel interfaces with a long record of exploitable bugs. */
    DENY(bpf, EPERM),
    DENY(userfaultfd, EPERM),
    DENY(perf_event_open, EPERM),
    DENY(io_uring_setup, ENOSYS),
    DENY(io_uring_enter, ENOSYS),
    DENY(io_uring_register, ENOSYS),
    /* Host administration: kernels, modules, accounting, swap, reboot, the kernel log, quotas,
     * file handles, I/O ports. */
    DENY(kexec_load, EPERM),
    DENY(kexec_file_load, EPERM),
    DENY(init_module, EPERM),
    DENY(finit_module, EPERM),
    DENY(delete_module, EPERM),
    DENY(acct, EPERM),
    DENY(swapon, EPERM),
    DENY(swapoff, EPERM),
    DENY(reboot, EPERM),
    DENY(syslog, EPERM),
    DENY(quotactl, EPERM),
    DENY(quotactl_fd, EPERM),
    DENY(name_to_handle_at, ENOSYS),
    DENY(open_by_handle_at, EPERM),
    DENY(iopl, EPERM),
    DENY(ioperm, EPERM),
    DENY(lookup_dcookie, EPERM),

    /* Processes and threads, but in no new namespace. */
    FOR_SYSCALL(clone, LOAD(SECCOMP_ARG(0)), NONE_OF(NEW_NAMESPACE_FLAGS, EPERM)),
    FOR_SYSCALL(unshare, LOAD(SECCOMP_ARG(0)), NONE_OF(NEW_NAMESPACE_FLAGS, EPERM)),
    /* Asking the personality, or changing it without weakening ASLR. */
    FOR_SYSCALL(personality, LOAD(SECCOMP_ARG(0)), IF_EQUAL(PERSONALITY_QUERY, 2, 0),
                NONE_OF(ASLR_WEAKENING_PERSONALITY, EPERM)),
    /* Sockets: Unix, IP and route netlink (interface lists) only; no raw or packet sockets. */
    FOR_SYSCALL(socket, LOAD(SECCOMP_ARG(0)),
                ONE_OF_4(AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, EAFNOSUPPORT)),
    FOR_SOCKET_FAMILY(AF_NETLINK, LOAD(SECCOMP_ARG(2)), ONE_OF_1(NETLINK_ROUTE, EPROTONOSUPPORT)),
    FOR_SOCKET_FAMILY(AF_UNIX, LOAD(SECCOMP_ARG(1)), KEEP_BITS(SOCKET_TYPE_MASK),
                      ONE_OF_3(SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET, EPERM)),
    FOR_SOCKET_FAMILY(AF_INET, LOAD(SECCOMP_ARG(1)), KEEP_BITS(SOCKET_TYPE_MASK),
                      ONE_OF_2(SOCK_STREAM, SOCK_DGRAM, EPERM)),
    FOR_SOCKET_FAMILY(AF_INET6, LOAD(SECCOMP_ARG(1)), KEEP_BITS(SOCKET_TYPE_MASK),
                      ONE_OF_2(SOCK_STREAM, SOCK_DGRAM, EPERM)),
    FOR_SOCKET_FAMILY(AF_INET, LOAD(SECCOMP_ARG(2)),
                      ONE_OF_4(0, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, EPROTONOSUPPORT)),
    FOR_SOCKET_FAMILY(AF_INET6, LOAD(SECCOMP_ARG(2)),
                      ONE_OF_4(0, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, EPROTONOSUPPORT)),

    RETURN(SECCOMP_RET_ALLOW),
};

/*
 * Sets no_new_privs (an unprivileged process needs it to install a filter, and no exec in a
 * session may gain privileges anyway), then the filter. It holds for the calling process and
 * every process it starts from now on, and cannot be removed. Single-threaded callers only.
 */
static inline int install_seccomp_filter(void) {
  struct sock_fprog program = {
      .len = (unsigned short)(sizeof berth_seccomp_program / sizeof berth_seccomp_program[0]),
      .filter = (struct sock_filter *)berth_seccomp_program,
  };
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program);
}

#else

/* The filter's syscall numbers are x86_64's; elsewhere it must be turned off explicitly. */
static inline int install_seccomp_filter(void) {
  errno = ENOSYS;
  return -1;
}

#endif

#endif
