// A C++ workload for the LD_PRELOAD check: libstdc++ allocates before any constructor
// of the preload runs (its emergency exception pool), operator new/delete reach malloc
// and free, aligned new reaches aligned_alloc, exceptions allocate, threads allocate.
// Deterministic output.
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

struct alignas(256) Wide {
    unsigned char bytes[300];
};

static std::uint64_t churn(int seed) {
    std::map<std::string, std::vector<int>> m;
    std::unordered_map<int, std::string> u;
    std::uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 40000; i++) {
        std::string k = "k" + std::to_string((i * seed) % 4099);
        m[k].push_back(i);
        u[i % 777] += static_cast<char>('a' + i % 26);
        if (i % 100 == 0) m.erase("k" + std::to_string(i % 50));
    }
    for (auto &kv : m) {
        h = (h ^ kv.first.size() ^ kv.second.size()) * 1099511628211ull;
    }
    for (int i = 0; i < 777; i++) h = (h ^ u[i].size()) * 1099511628211ull;
    // Aligned new: misalignment is reported on stderr, not in the compared output
    // (Debian's mimalloc 2.0.9 returns 128-aligned blocks for alignas(256) here; the
    // conformance test checks sigalloc's alignment).
    std::vector<std::unique_ptr<Wide>> wides;
    int misaligned = 0;
    for (int i = 0; i < 1000; i++) {
        wides.emplace_back(new Wide());
        misaligned += reinterpret_cast<std::uintptr_t>(wides.back().get()) % 256 != 0;
        wides.back()->bytes[i % 300] = static_cast<unsigned char>(i);
    }
    if (misaligned) std::fprintf(stderr, "cxx: %d of 1000 alignas(256) blocks misaligned\n", misaligned);
    int caught = 0;
    for (int i = 0; i < 2000; i++) {
        try {
            throw std::runtime_error(std::string(100 + i % 50, 'x'));
        } catch (const std::exception &e) {
            caught += e.what()[0] == 'x';
        }
    }
    return h ^ static_cast<std::uint64_t>(caught);
}

int main() {
    std::vector<std::uint64_t> out(4);
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; t++) ts.emplace_back([t, &out] { out[t] = churn(t + 1); });
    for (auto &t : ts) t.join();
    for (int t = 0; t < 4; t++) std::printf("thread %d: %016llx\n", t, static_cast<unsigned long long>(out[t]));
    std::vector<std::string> big(200000, std::string(40, 'q'));
    std::printf("big %zu\n", std::accumulate(big.begin(), big.end(), std::size_t{0},
                                             [](std::size_t a, const std::string &s) { return a + s.size(); }));
    return 0;
}
