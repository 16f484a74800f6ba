// CPU stand-in for <cuda_fp16.h> (emu.h): IEEE binary16 storage, round-to-nearest-even.
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
    unsigned short x;
};

inline float __half2float(__half h) {
    const unsigned s = (h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1f, m = h.x & 0x3ffu;
    unsigned u;
    if (e == 0) {
        if (m == 0) {
            u = s;
        } else {  // subnormal
            float f = (float)m * (1.0f / 16777216.0f);
            std::memcpy(&u, &f, 4);
            u |= s;
        }
    } else if (e == 31) {
        u = s | 0x7f800000u | (m << 13);
    } else {
        u = s | ((e + 112) << 23) | (m << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline __half __float2half_rn(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    const unsigned s = (u >> 16) & 0x8000u;
    const unsigned a = u & 0x7fffffffu;
    __half h;
    if (a > 0x7f800000u) {  // NaN
        h.x = (unsigned short)(s | 0x7e00u);
        return h;
    }
    if (a >= 0x477ff000u) {  // rounds to infinity (≥ 65520)
        h.x = (unsigned short)(s | 0x7c00u);
        return h;
    }
    if (a < 0x38800000u) {  // subnormal or zero in f16: round a·2^24 to an integer, ties to even
        float v;
        std::memcpy(&v, &a, 4);
        const float scaled = v * 16777216.0f;  // exact
        unsigned q = (unsigned)scaled;
        const float rem = scaled - (float)q;
        if (rem > 0.5f || (rem == 0.5f && (q & 1))) q++;
        h.x = (unsigned short)(s | q);
        return h;
    }
    const unsigned e = (a >> 23) - 112;
    unsigned m = a & 0x7fffffu;
    unsigned r = (e << 10) | (m >> 13);
    const unsigned rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (r & 1))) r++;
    h.x = (unsigned short)(s | r);
    return h;
}
