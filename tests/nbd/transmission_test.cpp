// Requests: each command, structured and simple replies, errors, limits, multi-conn,
// graceful stop with requests in flight.
#include "nbd/server_fixture.h"

namespace nbdtest {
namespace {

std::string data_of(const Client::Chunk& c) { return c.payload.substr(8); }

TEST_F(NbdServerTest, StructuredReadSendsHolesAsHolesAndDataAsData) {
  serve();
  auto c = connect();
  ASSERT_TRUE(c->go("top"));
  // [1M-64k, 1M) base data; [1M, 1M+64k) nothing anywhere.
  c->request(p::kCmdRead, 7, (1u << 20) - 65536, 131072);
  auto cs = c->chunks();
  ASSERT_EQ(cs.size(), 2u);
  EXPECT_EQ(cs[0].type, p::kReplyOffsetData);
  EXPECT_EQ(cs[0].handle, 7u);
  EXPECT_EQ(Client::u64(cs[0].payload, 0), (1u << 20) - 65536);
  EXPECT_EQ(data_of(cs[0]), fill(65536, 1));
  EXPECT_EQ(cs[1].type, p::kReplyOffsetHole);
  EXPECT_EQ(Client::u64(cs[1].payload, 0), 1u << 20);
  EXPECT_EQ(Client::u32(cs[1].payload, 8), 65536u);
  EXPECT_TRUE(cs[1].flags & p::kReplyFlagDone);
  // The zero cluster of the top reads as a hole too; DF asks for one data chunk.
  c->request(p::kCmdRead, 8, 2u << 20, 4096, p::kCmdFlagDf);
  cs = c->chunks();
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].type, p::kReplyOffsetData);
  EXPECT_EQ(data_of(cs[0]), fill(4096, 0));
}

TEST_F(NbdServerTest, SimpleRepliesWithoutStructuredReplies) {
  serve();
  auto c = connect();
  ASSERT_TRUE(c->go("top", false));
  c->request(p::kCmdRead, 1, 512 * 1024, 4096);
  auto r = c->simple();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->error, 0u);
  EXPECT_EQ(r->handle, 1u);
  EXPECT_EQ(*c->recv(4096), fill(4096, 2));
  c->request(p::kCmdRead, 2, kSize, 1);  // past the end: header only, EINVAL
  r = c->simple();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->error, p::kEinval);
  c->request(p::kCmdBlockStatus, 3, 0, 4096);  // needs structured replies
  EXPECT_EQ(c->simple()->error, p::kEinval);
}

TEST_F(NbdServerTest, WriteFuaFlushAndReadBackThroughAnotherConnection) {
  serve({.max_connections = 0});
  auto a = connect();
  auto b = connect();
  auto r = connect();
  ASSERT_TRUE(a->go("top"));
  ASSERT_TRUE(b->go("top"));
  ASSERT_TRUE(r->go("top", false));
  a->request(p::kCmdWrite, 1, 3u << 20, 8192, 0, fill(8192, 7));
  EXPECT_EQ(Client::error_of(a->chunks()), 0u);
  a->request(p::kCmdWrite, 2, 100, 3, p::kCmdFlagFua, "abc");
  EXPECT_EQ(Client::error_of(a->chunks()), 0u);
  b->request(p::kCmdFlush, 3, 0, 0);  // makes a's completed writes durable: one Disk
  EXPECT_EQ(Client::error_of(b->chunks()), 0u);
  r->request(p::kCmdRead, 4, 3u << 20, 8192);
  ASSERT_EQ(r->simple()->error, 0u);
  EXPECT_EQ(*r->recv(8192), fill(8192, 7));
  r->request(p::kCmdRead, 5, 99, 5);
  ASSERT_EQ(r->simple()->error, 0u);
  EXPECT_EQ(*r->recv(5), std::string("\x01" "abc" "\x01", 5));
}

TEST_F(NbdServerTest, WritesToAReadOnlyExportAreEperm) {
  serve({}, {}, true);
  auto c = connect();
  ASSERT_TRUE(c->go("top"));
  c->request(p::kCmdWrite, 1, 0, 4, 0, "abcd");
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEperm);
  c->request(p::kCmdTrim, 2, 0, 4096);
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEperm);
  c->request(p::kCmdWriteZeroes, 3, 0, 4096);
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEperm);
  c->request(p::kCmdFlush, 4, 0, 0);
  EXPECT_EQ(Client::error_of(c->chunks()), 0u);
}

TEST_F(NbdServerTest, BadRequestsGetErrorsAndTheConnectionGoesOn) {
  serve();
  auto c = connect();
  ASSERT_TRUE(c->go("top"));
  c->request(p::kCmdRead, 1, kSize - 1, 2);
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEinval);
  c->request(p::kCmdWrite, 2, kSize - 1, 2, 0, "ab");
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEnospc);
  c->request(p::kCmdRead, 3, UINT64_MAX - 10, 100);  // offset + length wraps
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEinval);
  c->request(p::kCmdRead, 4, 0, (32u << 20) + 1);
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEinval);
  c->request(42, 5, 0, 0);
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEinval);
  c->request(p::kCmdRead, 6, 0, 512, 0x100);  // unknown flag
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEinval);
  c->request(p::kCmdBlockStatus, 7, 0, 512);  // no context selected
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEinval);
  c->request(p::kCmdWriteZeroes, 8, 0, 512, p::kCmdFlagFastZero);  // export cannot zero fast
  EXPECT_EQ(Client::error_of(c->chunks()), p::kEnotsup);
  c->request(p::kCmdCache, 9, 0, 65536);
  EXPECT_EQ(Client::error_of(c->chunks()), 0u);
  c->request(p::kCmdRead, 10, 0, 0);
  auto cs = c->chunks();
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].type, p::kReplyNone);
}

TEST_F(NbdServerTest, OversizedWriteAndBadMagicDisconnect) {
  serve();
  auto c = connect();
  ASSERT_TRUE(c->go("top"));
  c->request(p::kCmdWrite, 1, 0, (32u << 20) + 1);
  EXPECT_TRUE(c->closed());
  auto d = connect();
  ASSERT_TRUE(d->go("top"));
  d->send(std::string(28, 'x'));
  EXPECT_TRUE(d->closed());
  // The server is still there.
  auto e = connect();
  EXPECT_TRUE(e->go("top"));
}

TEST_F(NbdServerTest, TrimAndWriteZeroesReadBackAsZeros) {
  serve({}, [](vd::nbd::Export& x) { x.fast_zero = true; });
  auto c = connect();
  ASSERT_TRUE(c->go("top", false));
  c->request(p::kCmdWriteZeroes, 1, 0, 65536, p::kCmdFlagNoHole | p::kCmdFlagFua);
  EXPECT_EQ(c->simple()->error, 0u);
  c->request(p::kCmdWriteZeroes, 2, 65536, 65536, p::kCmdFlagFastZero);
  EXPECT_EQ(c->simple()->error, 0u);
  c->request(p::kCmdTrim, 3, 512 * 1024, 65536, p::kCmdFlagFua);
  EXPECT_EQ(c->simple()->error, 0u);
  c->request(p::kCmdRead, 4, 0, 131072);
  ASSERT_EQ(c->simple()->error, 0u);
  EXPECT_EQ(*c->recv(131072), fill(131072, 0));
  c->request(p::kCmdRead, 5, 512 * 1024, 65536);  // discard reads as zeros or what is below
  ASSERT_EQ(c->simple()->error, 0u);
  std::string after = *c->recv(65536);
  EXPECT_TRUE(after == fill(65536, 0) || after == fill(65536, 1));
  EXPECT_NE(after, fill(65536, 2));
}

TEST_F(NbdServerTest, BlockStatusAllocationAndDepth) {
  serve();
  auto c = connect();
  ASSERT_TRUE(c->go("top", true, {"base:allocation", "qemu:allocation-depth"}));
  ASSERT_EQ(c->context_ids.size(), 2u);
  c->request(p::kCmdBlockStatus, 1, 0, kSize);
  auto cs = c->chunks();
  ASSERT_EQ(cs.size(), 2u);
  auto extents = [](const Client::Chunk& ch) {
    std::vector<std::pair<uint32_t, uint32_t>> v;
    for (size_t at = 4; at + 8 <= ch.payload.size(); at += 8) v.emplace_back(Client::u32(ch.payload, at), Client::u32(ch.payload, at + 4));
    return v;
  };
  using V = std::vector<std::pair<uint32_t, uint32_t>>;
  for (const auto& ch : cs) {
    ASSERT_EQ(ch.type, p::kReplyBlockStatus);
    uint32_t id = Client::u32(ch.payload, 0);
    if (id == c->context_ids[0]) {
      EXPECT_EQ(extents(ch), (V{{1u << 20, 0}, {3u << 20, 3}}));
    } else {
      EXPECT_EQ(id, c->context_ids[1]);
      EXPECT_EQ(extents(ch), (V{{512u << 10, 2}, {64u << 10, 1}, {448u << 10, 2}, {1u << 20, 0}, {64u << 10, 1}, {(2u << 20) - (64u << 10), 0}}));
    }
  }
  c->request(p::kCmdBlockStatus, 2, 0, kSize, p::kCmdFlagReqOne);
  cs = c->chunks();
  ASSERT_EQ(cs.size(), 2u);
  EXPECT_EQ(cs[0].payload.size(), 12u);
}

TEST_F(NbdServerTest, PipelinedRequestsUnderATightInFlightLimitAllComplete) {
  serve({.max_in_flight = 2, .max_in_flight_bytes = 8192});
  auto c = connect();
  ASSERT_TRUE(c->go("top", false));
  constexpr int kN = 64;
  std::string all;
  for (int i = 0; i < kN; ++i) {
    p::Writer w;
    w.u32(p::kRequestMagic).u16(0).u16(p::kCmdWrite).u64(i).u64(uint64_t(i) * 4096).u32(4096).str(fill(4096, char(i + 1)));
    all += w.bytes;
  }
  std::thread sender([&] { c->send(all); });
  std::vector<bool> seen(kN);
  for (int i = 0; i < kN; ++i) {
    auto r = c->simple();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error, 0u);
    ASSERT_LT(r->handle, uint64_t(kN));
    seen[r->handle] = true;
  }
  sender.join();
  EXPECT_EQ(std::count(seen.begin(), seen.end(), true), kN);
  c->request(p::kCmdRead, 99, 63 * 4096, 4096);
  ASSERT_EQ(c->simple()->error, 0u);
  EXPECT_EQ(*c->recv(4096), fill(4096, char(64)));
}

TEST_F(NbdServerTest, GracefulStopAnswersRequestsInFlightThenCloses) {
  serve();
  auto c = connect();
  ASSERT_TRUE(c->go("top", false));
  constexpr int kN = 16;
  for (int i = 0; i < kN; ++i) c->request(p::kCmdWrite, i, uint64_t(i) * 65536, 65536, 0, fill(65536, 9));
  // Stop once the server is busy with them: every request it has read gets its answer (a
  // request still unread in the socket when it stops is never read), then the socket closes.
  auto first = c->simple();
  ASSERT_TRUE(first);
  std::vector<uint64_t> answered{first->handle};
  std::thread stopper([&] { EXPECT_FALSE(stop()); });
  while (auto r = c->simple()) {
    EXPECT_EQ(r->error, 0u);
    answered.push_back(r->handle);
  }
  stopper.join();
  EXPECT_GE(answered.size(), 1u);
  EXPECT_LE(answered.size(), size_t(kN));
  shutdown();
  std::string cmds;
  for (uint64_t h : answered) cmds += " -c 'read -P 9 " + std::to_string(h * 65536) + " 64k'";
  vdtest::sh("qemu-io" + cmds + " " + top_ + " >/dev/null");
  vdtest::sh("qemu-img check -q " + top_);
}

TEST_F(NbdServerTest, DiscEndsTheConnectionAfterItsRequests) {
  serve();
  auto c = connect();
  ASSERT_TRUE(c->go("top", false));
  c->request(p::kCmdWrite, 1, 0, 4096, 0, fill(4096, 5));
  c->request(p::kCmdDisc, 2, 0, 0);
  auto r = c->simple();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->handle, 1u);
  EXPECT_TRUE(c->closed());
}

}  // namespace
}  // namespace nbdtest
