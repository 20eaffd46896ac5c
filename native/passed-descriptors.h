/*
 * One descriptor passed between two processes over a Unix socket (SCM_RIGHTS), with one byte of
 * data to carry it: how a command of berth-exec hands the keeper its terminal's master.
 */
#ifndef BERTH_PASSED_DESCRIPTORS_H
#define BERTH_PASSED_DESCRIPTORS_H

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Room for the control message of one descriptor, aligned as a cmsghdr. */
union one_descriptor {
  struct cmsghdr header;
  char room[CMSG_SPACE(sizeof(int))];
};

/* 0, or -1 with errno set. */
static inline int send_descriptor(int channel, int fd) {
  char byte = 'd';
  struct iovec data = {.iov_base = &byte, .iov_len = 1};
  union one_descriptor control;
  memset(&control, 0, sizeof control);
  struct msghdr message = {.msg_iov = &data,
                           .msg_iovlen = 1,
                           .msg_control = control.room,
                           .msg_controllen = sizeof control.room};
  struct cmsghdr *header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(header), &fd, sizeof fd);
  return sendmsg(channel, &message, 0) == 1 ? 0 : -1;
}

/* The descriptor already waiting on CHANNEL (close-on-exec), or -1 unless there is exactly one. */
static inline int receive_descriptor(int channel) {
  char byte;
  struct iovec data = {.iov_base = &byte, .iov_len = 1};
  union one_descriptor control;
  struct msghdr message = {.msg_iov = &data,
                           .msg_iovlen = 1,
                           .msg_control = control.room,
                           .msg_controllen = sizeof control.room};
  if (recvmsg(channel, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) != 1) return -1;
  struct cmsghdr *header = CMSG_FIRSTHDR(&message);
  /* MSG_CTRUNC: more came than there was room for, and the kernel closed the rest. */
  if ((message.msg_flags & MSG_CTRUNC) || header == NULL || header->cmsg_level != SOL_SOCKET ||
      header->cmsg_type != SCM_RIGHTS || header->cmsg_len != CMSG_LEN(sizeof(int)))
    return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(header), sizeof fd);
  return fd;
}

#endif
