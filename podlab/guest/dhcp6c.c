/*
 * A minimal stateful DHCPv6 client for the test guest (busybox-static has no udhcpc6).
 * Usage: dhcp6c IFACE   -> prints "ADDRESS DNS1,DNS2,..." and exits 0 once it has a lease.
 *
 * Solicit -> Advertise -> Request -> Reply (RFC 8415), with a DUID-LL made of the NIC's MAC
 * (so a server can match the client by MAC) and one IA_NA. Solicit is retried every second
 * for 30 s: the link-local address needs a moment before it can be used.
 */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

enum { SOLICIT = 1, ADVERTISE = 2, REQUEST = 3, REPLY = 7 };
enum { OPT_CLIENTID = 1, OPT_SERVERID = 2, OPT_IA_NA = 3, OPT_IAADDR = 5, OPT_ORO = 6,
       OPT_ELAPSED = 8, OPT_DNS = 23 };

static unsigned char duid[10], serverid[256], xid[3];
static int serverid_len;

static unsigned char *put_option(unsigned char *p, int code, const void *data, int len)
{
	p[0] = code >> 8; p[1] = code; p[2] = len >> 8; p[3] = len;
	memcpy(p + 4, data, len);
	return p + 4 + len;
}

static int build(unsigned char *msg, int type, const unsigned char *address)
{
	unsigned char ia[12 + 28] = { 0, 0, 0, 1 }, *p = msg + 4;   /* IAID 1, T1 = T2 = 0 */
	int ia_len = 12;
	static const unsigned char oro[] = { 0, OPT_DNS }, elapsed[2];

	msg[0] = type;
	memcpy(msg + 1, xid, 3);
	p = put_option(p, OPT_CLIENTID, duid, sizeof(duid));
	if (type == REQUEST)
		p = put_option(p, OPT_SERVERID, serverid, serverid_len);
	if (address) {  /* ask for the address offered */
		unsigned char iaaddr[24] = { 0 };
		memcpy(iaaddr, address, 16);
		put_option(ia + 12, OPT_IAADDR, iaaddr, sizeof(iaaddr));
		ia_len += 28;
	}
	p = put_option(p, OPT_IA_NA, ia, ia_len);
	p = put_option(p, OPT_ORO, oro, sizeof(oro));
	p = put_option(p, OPT_ELAPSED, elapsed, sizeof(elapsed));
	return p - msg;
}

/* Reads the options of a reply: the server id, the address of the IA_NA, the DNS servers. */
static int parse(const unsigned char *msg, int len, unsigned char *address, char *dns)
{
	const unsigned char *p = msg + 4, *end = msg + len;
	int found = 0;

	while (p + 4 <= end) {
		int code = p[0] << 8 | p[1], olen = p[2] << 8 | p[3];
		const unsigned char *data = p + 4;

		if (data + olen > end)
			break;
		if (code == OPT_SERVERID && olen <= (int)sizeof(serverid)) {
			memcpy(serverid, data, olen);
			serverid_len = olen;
		} else if (code == OPT_IA_NA && olen >= 12) {
			const unsigned char *q = data + 12;
			while (q + 4 <= data + olen) {
				int qcode = q[0] << 8 | q[1], qlen = q[2] << 8 | q[3];
				if (qcode == OPT_IAADDR && qlen >= 24) {
					memcpy(address, q + 4, 16);
					found = 1;
				}
				q += 4 + qlen;
			}
		} else if (code == OPT_DNS) {
			for (int i = 0; i + 16 <= olen; i += 16) {
				char text[INET6_ADDRSTRLEN];
				inet_ntop(AF_INET6, data + i, text, sizeof(text));
				if (*dns)
					strcat(dns, ",");
				strcat(dns, text);
			}
		}
		p = data + olen;
	}
	return found;
}

int main(int argc, char **argv)
{
	unsigned char msg[512], reply[1500], address[16];
	char dns[512] = "", text[INET6_ADDRSTRLEN];
	struct sockaddr_in6 local = { .sin6_family = AF_INET6, .sin6_port = htons(546) };
	struct sockaddr_in6 servers = { .sin6_family = AF_INET6, .sin6_port = htons(547) };
	struct timeval second = { 1, 0 };
	struct ifreq ifr = { 0 };
	int fd, stage = SOLICIT;

	if (argc != 2)
		return 2;
	fd = socket(AF_INET6, SOCK_DGRAM, 0);
	strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
	if (fd < 0 || ioctl(fd, SIOCGIFHWADDR, &ifr) < 0)
		return 1;
	duid[1] = 3; duid[3] = 1;  /* DUID-LL, hardware type Ethernet */
	memcpy(duid + 4, ifr.ifr_hwaddr.sa_data, 6);
	memcpy(xid, duid + 7, 3);
	inet_pton(AF_INET6, "ff02::1:2", &servers.sin6_addr);
	servers.sin6_scope_id = if_nametoindex(argv[1]);
	setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, argv[1], strlen(argv[1]));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &second, sizeof(second));
	for (int tries = 0; tries < 30; tries++) {
		if (bind(fd, (struct sockaddr *)&local, sizeof(local)) == 0)
			break;
		sleep(1);  /* no usable link-local address yet */
	}
	for (int tries = 0; tries < 30; tries++) {
		int len = build(msg, stage, stage == REQUEST ? address : NULL), got;

		sendto(fd, msg, len, 0, (struct sockaddr *)&servers, sizeof(servers));
		got = recv(fd, reply, sizeof(reply), 0);
		if (got < 4 || memcmp(reply + 1, xid, 3) != 0)
			continue;  /* nothing yet, or not for us: ask again */
		if (stage == SOLICIT && reply[0] == ADVERTISE && parse(reply, got, address, dns)) {
			stage = REQUEST;
			dns[0] = 0;
			tries = 0;
		} else if (stage == REQUEST && reply[0] == REPLY && parse(reply, got, address, dns)) {
			inet_ntop(AF_INET6, address, text, sizeof(text));
			printf("%s %s\n", text, *dns ? dns : "-");
			return 0;
		}
	}
	return 1;
}
