// Option negotiation against proto.md and qemu-nbd's answers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cstdio>

#include "nbd/server_fixture.h"

namespace nbdtest {
namespace {

TEST_F(NbdServerTest, GreetsFixedNewstyleAndGoGivesTruthfulFlags) {
  serve({.max_connections = 2});
  auto c = connect();
  uint16_t f = c->go("top");
  EXPECT_EQ(c->size, kSize);
  EXPECT_TRUE(f & p::kHasFlags);
  EXPECT_TRUE(f & p::kSendFlush);
  EXPECT_TRUE(f & p::kSendFua);
  EXPECT_TRUE(f & p::kSendTrim);
  EXPECT_TRUE(f & p::kSendWriteZeroes);
  EXPECT_TRUE(f & p::kSendFastZero);
  EXPECT_TRUE(f & p::kSendCache);
  EXPECT_TRUE(f & p::kSendDf);  // structured replies negotiated
  EXPECT_TRUE(f & p::kCanMultiConn);
  EXPECT_FALSE(f & p::kReadOnly);
}

TEST_F(NbdServerTest, ReadOnlyExportSaysSoAndOffersNoWrites) {
  serve({}, [](vd::nbd::Export& x) { x.multi_conn = false; }, true);
  auto c = connect();
  uint16_t f = c->go("top", false);
  EXPECT_TRUE(f & p::kReadOnly);
  EXPECT_FALSE(f & (p::kSendTrim | p::kSendWriteZeroes | p::kSendFastZero));
  EXPECT_FALSE(f & p::kCanMultiConn);
  EXPECT_FALSE(f & p::kSendDf);  // no structured replies
}

TEST_F(NbdServerTest, InfoSendsNameDescriptionBlockSizeThenExport) {
  serve();
  auto c = connect();
  c->hello();
  c->option(p::kOptInfo, Client::go_payload("top", {p::kInfoName, p::kInfoDescription, p::kInfoBlockSize}));
  std::vector<uint16_t> infos;
  for (;;) {
    auto r = c->reply();
    ASSERT_TRUE(r);
    if (r->type == p::kRepAck) break;
    ASSERT_EQ(r->type, p::kRepInfo);
    uint16_t t = Client::u16(r->data, 0);
    infos.push_back(t);
    if (t == p::kInfoName) {
      EXPECT_EQ(r->data.substr(2), "top");
    }
    if (t == p::kInfoDescription) {
      EXPECT_EQ(r->data.substr(2), "the top of a chain");
    }
    if (t == p::kInfoBlockSize) {
      EXPECT_EQ(Client::u32(r->data, 2), 1u);
      EXPECT_EQ(Client::u32(r->data, 6), 4096u);
      EXPECT_EQ(Client::u32(r->data, 10), 32u << 20);
    }
  }
  EXPECT_EQ(infos, (std::vector<uint16_t>{p::kInfoName, p::kInfoDescription, p::kInfoBlockSize, p::kInfoExport}));
  // INFO does not enter transmission: GO still works afterwards.
  c->option(p::kOptGo, Client::go_payload("top"));
  for (;;) {
    auto r = c->reply();
    ASSERT_TRUE(r);
    if (r->type == p::kRepAck) break;
  }
}

TEST_F(NbdServerTest, UnknownExportIsErrUnknownAndTheClientMayRetry) {
  serve();
  auto c = connect();
  c->hello();
  c->option(p::kOptGo, Client::go_payload("nope"));
  auto r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, p::kRepErrUnknown);
  EXPECT_NE(r->data.find("nope"), std::string::npos);
  c->option(p::kOptGo, Client::go_payload("top"));
  r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->type & p::kRepErrBit);
}

TEST_F(NbdServerTest, ListNamesEveryExportWithItsDescription) {
  serve();
  auto c = connect();
  c->hello();
  c->option(p::kOptList);
  auto r = c->reply();
  ASSERT_TRUE(r);
  ASSERT_EQ(r->type, p::kRepServer);
  EXPECT_EQ(Client::u32(r->data, 0), 3u);
  EXPECT_EQ(r->data.substr(4), "topthe top of a chain");
  r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, p::kRepAck);
  c->option(p::kOptList, "x");
  r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, p::kRepErrInvalid);
}

TEST_F(NbdServerTest, ExportNameWithoutNoZeroesSendsTheZeroPad) {
  serve();
  auto c = connect();
  c->hello(p::kClientFixedNewstyle);
  c->option(p::kOptExportName, "top");
  auto r = c->recv(8 + 2 + 124);
  ASSERT_TRUE(r);
  EXPECT_EQ(Client::u64(*r, 0), kSize);
  EXPECT_EQ(r->substr(10), std::string(124, '\0'));
}

TEST_F(NbdServerTest, ExportNameOfUnknownExportDisconnects) {
  serve();
  auto c = connect();
  c->hello();
  c->option(p::kOptExportName, "nope");
  EXPECT_TRUE(c->closed());
}

TEST_F(NbdServerTest, UnknownOptionIsUnsupAndAbortIsAcked) {
  serve();
  auto c = connect();
  c->hello();
  c->option(99, "junk");
  auto r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, p::kRepErrUnsup);
  c->option(p::kOptStructuredReply);
  ASSERT_EQ(c->reply()->type, p::kRepAck);
  c->option(p::kOptStructuredReply);
  EXPECT_EQ(c->reply()->type, p::kRepErrInvalid);
  c->option(p::kOptAbort);
  r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, p::kRepAck);
  EXPECT_TRUE(c->closed());
}

TEST_F(NbdServerTest, MetaContextsListedAndSelected) {
  serve();
  auto c = connect();
  c->hello();
  c->option(p::kOptListMetaContext, Client::meta_payload("top", {}));
  EXPECT_EQ(c->reply()->type, p::kRepErrInvalid);  // structured replies first
  c->option(p::kOptStructuredReply);
  ASSERT_EQ(c->reply()->type, p::kRepAck);
  auto names = [&](uint32_t opt, std::vector<std::string> q) {
    c->option(opt, Client::meta_payload("top", q));
    std::vector<std::string> v;
    for (;;) {
      auto r = c->reply();
      if (!r || r->type != p::kRepMetaContext) break;
      v.push_back(r->data.substr(4));
    }
    return v;
  };
  EXPECT_EQ(names(p::kOptListMetaContext, {}), (std::vector<std::string>{"base:allocation", "qemu:allocation-depth"}));
  EXPECT_EQ(names(p::kOptListMetaContext, {"qemu:"}), (std::vector<std::string>{"qemu:allocation-depth"}));
  EXPECT_EQ(names(p::kOptSetMetaContext, {"base:allocation", "qemu:nope"}), (std::vector<std::string>{"base:allocation"}));
  c->option(p::kOptSetMetaContext, Client::meta_payload("nope", {"base:allocation"}));
  EXPECT_EQ(c->reply()->type, p::kRepErrUnknown);
}

TEST_F(NbdServerTest, MalformedOptionsAreRefusedOrDropped) {
  serve();
  auto c = connect();
  c->hello();
  c->option(p::kOptGo, "\x00\x00\x01\x00ab");  // name length beyond the payload
  auto r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, p::kRepErrInvalid);
  // An option longer than the server buffers: dropped, no reply.
  c->send(p::Writer().u64(p::kOptMagic).u32(p::kOptGo).u32(1u << 30).bytes);
  EXPECT_TRUE(c->closed());
  auto d = connect();
  d->hello();
  d->send("garbage!garbage!");  // bad option magic
  EXPECT_TRUE(d->closed());
  auto e = connect();
  EXPECT_NE(e->hello(0x80), 0xffff);  // unknown client flags
  EXPECT_TRUE(e->closed());
}

TEST_F(NbdServerTest, HandshakeTimeoutDropsASilentClient) {
  serve({.handshake_timeout = std::chrono::milliseconds(200)});
  auto c = connect();
  ASSERT_TRUE(c->recv(18));
  EXPECT_TRUE(c->closed(5000));
}

TEST_F(NbdServerTest, TlsRequiredRefusesPlaintextOptions) {
  vdtest::sh(std::string(VD_NBD_TEST_DIR) + "/make-tls-certs.sh " + dir_.file("tls"));
  serve({.tls = vd::nbd::TlsCredentials{dir_.file("tls"), true}});
  auto c = connect();
  c->hello();
  for (uint32_t opt : {p::kOptList, p::kOptGo, p::kOptStructuredReply, p::kOptInfo}) {
    c->option(opt, opt == p::kOptGo || opt == p::kOptInfo ? Client::go_payload("top") : "");
    auto r = c->reply();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->type, p::kRepErrTlsReqd) << opt;
  }
  c->option(p::kOptExportName, "top");  // cannot be refused: dropped
  EXPECT_TRUE(c->closed());
}

TEST_F(NbdServerTest, AClientStallingTheTlsHandshakeIsDroppedByTheTimeout) {
  vdtest::sh(std::string(VD_NBD_TEST_DIR) + "/make-tls-certs.sh " + dir_.file("tls"));
  serve({.handshake_timeout = std::chrono::milliseconds(300), .tls = vd::nbd::TlsCredentials{dir_.file("tls"), true}});
  auto c = connect();
  c->hello();
  c->option(p::kOptStartTls);
  auto r = c->reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, p::kRepAck);
  EXPECT_TRUE(c->closed(5000));  // no ClientHello ever comes
}

TEST_F(NbdServerTest, StartTlsWithoutCredentialsIsPolicy) {
  serve();
  auto c = connect();
  c->hello();
  c->option(p::kOptStartTls);
  EXPECT_EQ(c->reply()->type, p::kRepErrPolicy);
}

}  // namespace
}  // namespace nbdtest

namespace nbdtest {
namespace {

int connect_unix(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return fd;
}

int connect_tcp(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return fd;
}

TEST_F(NbdServerTest, ConnectionLimitHoldsTheNextClientUntilOneLeaves) {
  serve({.max_connections = 1});
  std::string sock = dir_.file("s.sock");
  ASSERT_FALSE(on_io([&] { return server_->listen_unix(sock); }));
  auto a = std::make_unique<Client>(connect_unix(sock));
  ASSERT_TRUE(a->go("top"));
  Client b(connect_unix(sock));
  EXPECT_FALSE(b.recv(18, 300));  // in the backlog, not served
  a.reset();                      // the first leaves
  EXPECT_TRUE(b.go("top"));
}

TEST_F(NbdServerTest, ListensOnTcpWithAPickedPort) {
  serve({.max_connections = 0});
  ASSERT_FALSE(on_io([&] { return server_->listen_tcp("127.0.0.1", 0); }));
  auto ports = on_io([&] { return server_->tcp_ports(); });
  ASSERT_EQ(ports.size(), 1u);
  Client c(connect_tcp(ports[0]));
  EXPECT_TRUE(c.go("top"));
  c.request(p::kCmdRead, 1, 512 * 1024, 16);
  auto cs = c.chunks();
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].payload.substr(8), fill(16, 2));
}

}  // namespace
}  // namespace nbdtest
