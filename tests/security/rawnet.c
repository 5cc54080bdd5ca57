/* rawnet: the attacker's and the witness's tools for tests/security/test_bridge_isolation.py.
 *
 * Built static by the test (cc -static) and bind-mounted read-only into
 * containers and a VM on a test bridge; it never runs on the host.
 *
 *   rawnet frame IFACE KIND ETHER_SRC ETHER_DST SRC_IP DST_IP MARKER
 *       write one Ethernet frame on IFACE through an AF_PACKET socket
 *       (needs CAP_NET_RAW).  KIND: "udp" (IPv4/UDP to port 9), "arp"
 *       (an ARP reply: sender SRC_IP at ETHER_SRC, target DST_IP at
 *       ETHER_DST), "ipv6" (an IPv6/UDP packet, link-local source).  MARKER
 *       is carried in the payload (ARP: in the frame's padding) so the
 *       witness can tell the test's frames from everything else.
 *   rawnet sniff IFACE SECONDS MARKER
 *       print one line per frame on IFACE that carries MARKER:
 *       "ethertype=0x0800 src=MAC from=IP" (ARP: the sender's MAC/IP), after
 *       a first line "ready"; exit after a frame carrying MARKER-END or
 *       SECONDS.
 *   rawnet ping DST
 *       one ICMP echo through an unprivileged ICMP socket
 *       (socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP), icmp(7)): prints
 *       "reply from DST" and exits 0, or the errno and exits 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip_icmp.h>
#include <netpacket/packet.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    printf("error %s: %s\n", what, strerror(errno));
    exit(1);
}

static void parse_mac(const char *text, uint8_t out[6]) {
    unsigned b[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) {
        printf("error bad mac %s\n", text);
        exit(2);
    }
    for (int i = 0; i < 6; i++) out[i] = (uint8_t)b[i];
}

static uint16_t checksum(const void *data, size_t len) {
    const uint8_t *p = data;
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1) sum += (uint32_t)(p[len - 1] << 8);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

static int packet_socket(const char *ifname, struct sockaddr_ll *addr) {
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0) die("socket(AF_PACKET)");
    memset(addr, 0, sizeof *addr);
    addr->sll_family = AF_PACKET;
    addr->sll_protocol = htons(ETH_P_ALL);
    addr->sll_ifindex = (int)if_nametoindex(ifname);
    if (addr->sll_ifindex == 0) die("if_nametoindex");
    if (bind(fd, (struct sockaddr *)addr, sizeof *addr) != 0) die("bind");
    return fd;
}

static int frame(char **argv) {
    const char *ifname = argv[0], *kind = argv[1], *marker = argv[6];
    uint8_t src[6], dst[6], buf[256];
    struct in_addr sip, dip;
    parse_mac(argv[2], src);
    parse_mac(argv[3], dst);
    if (!inet_aton(argv[4], &sip) || !inet_aton(argv[5], &dip)) die("inet_aton");
    size_t mlen = strlen(marker), len;
    if (mlen > 64) mlen = 64;
    memset(buf, 0, sizeof buf);
    memcpy(buf, dst, 6);
    memcpy(buf + 6, src, 6);
    uint8_t *p = buf + 14;
    if (strcmp(kind, "arp") == 0) {
        buf[12] = 0x08, buf[13] = 0x06;
        p[0] = 0, p[1] = 1;        /* htype Ethernet */
        p[2] = 0x08, p[3] = 0;     /* ptype IPv4 */
        p[4] = 6, p[5] = 4;        /* hlen, plen */
        p[6] = 0, p[7] = 2;        /* op: reply */
        memcpy(p + 8, src, 6);
        memcpy(p + 14, &sip, 4);
        memcpy(p + 18, dst, 6);
        memcpy(p + 24, &dip, 4);
        memcpy(p + 28, marker, mlen);  /* in the padding */
        len = 14 + 28 + mlen;
    } else if (strcmp(kind, "udp") == 0) {
        buf[12] = 0x08, buf[13] = 0x00;
        size_t total = 20 + 8 + mlen;
        p[0] = 0x45;
        p[2] = (uint8_t)(total >> 8), p[3] = (uint8_t)total;
        p[8] = 64;                 /* ttl */
        p[9] = 17;                 /* UDP */
        memcpy(p + 12, &sip, 4);
        memcpy(p + 16, &dip, 4);
        uint16_t sum = checksum(p, 20);
        memcpy(p + 10, &sum, 2);
        uint8_t *u = p + 20;
        u[0] = 0x30, u[1] = 0x39;  /* source port 12345 */
        u[2] = 0, u[3] = 9;        /* discard */
        u[4] = (uint8_t)((8 + mlen) >> 8), u[5] = (uint8_t)(8 + mlen);
        memcpy(u + 8, marker, mlen);  /* UDP checksum 0: none (IPv4 allows it) */
        len = 14 + total;
    } else if (strcmp(kind, "ipv6") == 0) {
        buf[12] = 0x86, buf[13] = 0xdd;
        p[0] = 0x60;
        p[4] = (uint8_t)((8 + mlen) >> 8), p[5] = (uint8_t)(8 + mlen);
        p[6] = 17, p[7] = 64;
        p[8] = 0xfe, p[9] = 0x80;  /* fe80::1 -> fe80::2 */
        p[23] = 1;
        p[24] = 0xfe, p[25] = 0x80;
        p[39] = 2;
        uint8_t *u = p + 40;
        u[0] = 0x30, u[1] = 0x39, u[3] = 9;
        u[4] = (uint8_t)((8 + mlen) >> 8), u[5] = (uint8_t)(8 + mlen);
        u[6] = 0xff, u[7] = 0xff;  /* not a valid checksum; the frame only has to arrive */
        memcpy(u + 8, marker, mlen);
        len = 14 + 40 + 8 + mlen;
    } else {
        printf("error unknown kind %s\n", kind);
        return 2;
    }
    if (len < 60) len = 60;
    struct sockaddr_ll addr;
    int fd = packet_socket(ifname, &addr);
    if (send(fd, buf, len, 0) != (ssize_t)len) die("send");
    printf("sent %s\n", kind);
    return 0;
}

static int sniff(char **argv) {
    const char *marker = argv[2];
    char end[80];
    snprintf(end, sizeof end, "%s-END", marker);
    struct sockaddr_ll addr;
    int fd = packet_socket(argv[0], &addr);
    printf("ready\n");
    fflush(stdout);
    time_t stop = time(NULL) + atoi(argv[1]);
    uint8_t buf[2048];
    while (time(NULL) < stop) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 200) <= 0) continue;
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 14 || !memmem(buf, (size_t)n, marker, strlen(marker))) continue;
        unsigned type = (unsigned)(buf[12] << 8 | buf[13]);
        const uint8_t *mac = buf + 6, *ip = NULL;
        if (type == 0x0806 && n >= 42) mac = buf + 22, ip = buf + 28;
        if (type == 0x0800 && n >= 34) ip = buf + 26;
        printf("ethertype=0x%04x src=%02x:%02x:%02x:%02x:%02x:%02x", type, mac[0], mac[1], mac[2], mac[3],
               mac[4], mac[5]);
        if (ip) printf(" from=%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
        printf("\n");
        fflush(stdout);
        if (memmem(buf, (size_t)n, end, strlen(end))) return 0;
    }
    printf("timeout\n");
    return 0;
}

static int ping(const char *host) {
    struct sockaddr_in to = {.sin_family = AF_INET};
    if (!inet_aton(host, &to.sin_addr)) die("inet_aton");
    int fd = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (fd < 0) die("socket(ICMP)");
    struct icmphdr echo = {.type = ICMP_ECHO};
    echo.un.echo.sequence = htons(1);
    if (sendto(fd, &echo, sizeof echo, 0, (struct sockaddr *)&to, sizeof to) < 0) die("sendto");
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, 3000) <= 0) {
        printf("no reply\n");
        return 1;
    }
    struct icmphdr reply;
    if (recv(fd, &reply, sizeof reply, 0) < 0) die("recv");
    printf(reply.type == ICMP_ECHOREPLY ? "reply from %s\n" : "unexpected reply from %s\n", host);
    return reply.type == ICMP_ECHOREPLY ? 0 : 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 9 && strcmp(argv[1], "frame") == 0) return frame(argv + 2);
    if (argc == 5 && strcmp(argv[1], "sniff") == 0) return sniff(argv + 2);
    if (argc == 3 && strcmp(argv[1], "ping") == 0) return ping(argv[2]);
    fprintf(stderr, "usage: rawnet frame IFACE KIND ETHER_SRC ETHER_DST SRC_IP DST_IP MARKER | "
                    "sniff IFACE SECONDS MARKER | ping DST\n");
    return 2;
}
