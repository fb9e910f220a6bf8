"""The data movement of cuda/matmul_bf16.cu, replayed on the host: swizzled shared-memory tiles,
ldmatrix fragments and mma.sync m16n8k16 tiles, for the four operand layouts.

The GPU is not here to run the kernel (and is lent for a few minutes when it is), so the one
part of a tensor-core kernel that is easy to get wrong and hard to see — which lane holds which
element — is checked here, on any machine. The index formulas below are the kernel's, written
out in Python (keep them in step with matmul_bf16.cu: kmajor_offset, mnmajor_offset,
load_chunk, the ldmatrix lane addresses); the semantics they are replayed against are PTX's:

  ldmatrix .x4   lanes 8i .. 8i+7 give the 16-byte row addresses of 8 x 8 matrix i; lane l
                 receives, in register i, row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 of
                 matrix i (with .trans: column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1).
  mma m16n8k16   a0..a3 = A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..];
                 b0, b1 = B[2t..][g], B[2t+8..][g]; c0..c3 = C[g][2t], C[g][2t+1],
                 C[g+8][2t], C[g+8][2t+1] (g = lane / 4, t = lane % 4).

Checked: every chunk lands once in its tile (the swizzle is a permutation), every 8-lane phase
of an ldmatrix and of the cp.async stores touches 8 different 16-byte bank groups (the header's
arithmetic), and a whole 128 x 128 block tile computed through these fragments equals the
NumPy product over two K steps in each layout.
"""
import numpy as np
import pytest

BM = BN = 128
BK = 32
THREADS = 256


def kmajor_offset(row, k):
    return row * BK + ((((k >> 3) ^ (row >> 1)) & 3) << 3) + (k & 7)


def mnmajor_offset(krow, x):
    return krow * BM + (((x >> 3) ^ (krow & 7)) << 3) + (x & 7)


def chunk_target(kmajor, f):
    """(stored row, stored col offsets within the tile, shared offset) of chunk f (load_chunk)."""
    if kmajor:
        r, k = f >> 2, (f & 3) << 3
        return r, k, kmajor_offset(r, k)
    kr, x = f >> 4, (f & 15) << 3
    return kr, x, mnmajor_offset(kr, x)


def stage(stored, kmajor, r0, k0):
    """The shared tile of one operand's K step, as load_chunk fills it (zero outside)."""
    tile = np.full(BM * BK, np.nan)
    for f in range(512):
        a, b, dst = chunk_target(kmajor, f)
        row, col = (r0 + a, k0 + b) if kmajor else (k0 + a, r0 + b)
        for e in range(8):
            inside = row < stored.shape[0] and col + e < stored.shape[1]
            assert np.isnan(tile[dst + e]), "two chunks write one element"
            tile[dst + e] = stored[row, col + e] if inside else 0.0
    assert not np.isnan(tile).any(), "an element of the tile is never written"
    return tile


def ldmatrix_x4(tile, addresses, trans):
    """regs[i][lane] = (value, value) per the PTX semantics; addresses: 32 element offsets."""
    mats = [np.stack([tile[addresses[8 * i + j]:addresses[8 * i + j] + 8] for j in range(8)]) for i in range(4)]
    regs = np.empty((4, 32, 2))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            m = mats[i].T if trans else mats[i]
            regs[i, lane] = m[g, 2 * t], m[g, 2 * t + 1]
    return regs


def a_addresses(r0, kk, trans_a):
    out = []
    for lane in range(32):
        quad, row8 = lane >> 3, lane & 7
        if not trans_a:
            out.append(kmajor_offset(r0 + (lane & 15), kk + (lane >> 4) * 8))
        else:
            out.append(mnmajor_offset(kk + row8 + (quad >> 1) * 8, r0 + (quad & 1) * 8))
    return out


def b_addresses(c0, kk, trans_b):
    out = []
    for lane in range(32):
        quad, row8 = lane >> 3, lane & 7
        if trans_b:
            out.append(kmajor_offset(c0 + row8 + (quad >> 1) * 8, kk + (quad & 1) * 8))
        else:
            out.append(mnmajor_offset(kk + row8 + (quad & 1) * 8, c0 + (quad >> 1) * 8))
    return out


def mma(acc, fa, fb):
    """acc (32 lanes, 4) += A @ B with A from fa (4 regs x 32 lanes x 2) and B from fb (2 regs)."""
    a, b = np.zeros((16, 16)), np.zeros((16, 8))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        a[g, 2 * t:2 * t + 2], a[g + 8, 2 * t:2 * t + 2] = fa[0][lane], fa[1][lane]
        a[g, 2 * t + 8:2 * t + 10], a[g + 8, 2 * t + 8:2 * t + 10] = fa[2][lane], fa[3][lane]
        b[2 * t:2 * t + 2, g], b[2 * t + 8:2 * t + 10, g] = fb[0][lane], fb[1][lane]
    d = a @ b
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        acc[lane] += d[g, 2 * t], d[g, 2 * t + 1], d[g + 8, 2 * t], d[g + 8, 2 * t + 1]


def block_tile(a_stored, b_stored, trans_a, trans_b, m0=0, n0=0):
    """The 128 x 128 output tile at (m0, n0) through staging, ldmatrix and mma, as the kernel does."""
    k_total = a_stored.shape[0] if trans_a else a_stored.shape[1]
    out = np.zeros((BM, BN))
    for k0 in range(0, k_total, BK):
        at = stage(a_stored, not trans_a, m0, k0)
        bt = stage(b_stored, bool(trans_b), n0, k0)
        for warp in range(THREADS // 32):
            wm0, wn0 = (warp >> 2) * 64, (warp & 3) * 32
            for kk in (0, 16):
                fa = [ldmatrix_x4(at, a_addresses(wm0 + mi * 16, kk, trans_a), trans_a) for mi in range(4)]
                fb = []
                for nj in range(2):
                    r = ldmatrix_x4(bt, b_addresses(wn0 + nj * 16, kk, trans_b), not trans_b)
                    fb += [(r[0], r[1]), (r[2], r[3])]
                for mi in range(4):
                    for ni in range(4):
                        acc = np.zeros((32, 4))
                        mma(acc, fa[mi], fb[ni])
                        for lane in range(32):
                            g, t = lane >> 2, lane & 3
                            for e in range(4):
                                out[wm0 + mi * 16 + g + 8 * (e >> 1), wn0 + ni * 8 + 2 * t + (e & 1)] += acc[lane, e]
    return out


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_block_tile_through_the_fragments_is_the_product(trans_a, trans_b):
    rng = np.random.default_rng(trans_a * 2 + trans_b)
    m, n, k = 136, 144, 64          # the tile at (0, 0) plus rows, columns beyond it (ignored there)
    a = rng.integers(-8, 8, (m, k)).astype(np.float64)       # small integers: exact sums, exact compare
    b = rng.integers(-8, 8, (k, n)).astype(np.float64)
    got = block_tile(a.T.copy() if trans_a else a, b.T.copy() if trans_b else b, trans_a, trans_b)
    np.testing.assert_array_equal(got, (a @ b)[:BM, :BN])


def test_edge_tile_zero_fills():
    """The last tile of a 130 x 70 x 40 product: rows, columns and k beyond the matrix read as 0."""
    rng = np.random.default_rng(9)
    a, b = rng.integers(-8, 8, (130, 40)).astype(np.float64), rng.integers(-8, 8, (70, 40)).astype(np.float64)
    got = block_tile(a, b, 0, 1, m0=128)
    np.testing.assert_array_equal(got[:2, :70], (a @ b.T)[128:130])
    assert not got[2:].any() and not got[:, 70:].any()


def bank_groups(offsets):
    return [((2 * off) // 16) % 8 for off in offsets]


@pytest.mark.parametrize("trans", [0, 1])
def test_ldmatrix_phases_are_conflict_free(trans):
    for kk in (0, 16):
        for r0 in range(0, BM, 16):
            for addresses in (a_addresses(r0, kk, trans), b_addresses(r0, kk, trans)):
                for i in range(4):
                    phase = addresses[8 * i:8 * i + 8]
                    assert all(off % 8 == 0 for off in phase), "ldmatrix rows must be 16-byte aligned"
                    assert len(set(bank_groups(phase))) == 8, f"conflict in matrix {i}: {bank_groups(phase)}"


@pytest.mark.parametrize("kmajor", [True, False])
def test_staging_is_a_permutation_and_conflict_free(kmajor):
    targets = [chunk_target(kmajor, f)[2] for f in range(512)]
    assert sorted(targets) == list(range(0, BM * BK, 8))           # each 16-byte slot once
    for q in range(0, 512, 8):                                      # 8 consecutive threads' stores
        assert len(set(bank_groups(targets[q:q + 8]))) == 8


def test_without_the_swizzle_the_reads_would_conflict():
    """The arithmetic of the header: unswizzled 64-byte rows give 2 bank groups over 8 rows,
    256-byte rows 1 (a 4-way and an 8-way conflict)."""
    assert len(set(bank_groups([r * BK for r in range(8)]))) == 2
    assert len(set(bank_groups([r * BM for r in range(8)]))) == 1


# --- cuda/attention_bf16.cu: 64 x 64 tiles of 128-byte rows, and P repacked in registers --------

D = 64


def fa_offset(row, x):
    return row * D + ((((x >> 3) ^ row) & 7) << 3) + (x & 7)


def fa_tile(rows):
    """A (64, 64) block as fa_load_tile stores it (chunk f: row f / 8, columns (f % 8) * 8 ...)."""
    tile = np.full(64 * D, np.nan)
    for f in range(512):
        r, x = f >> 3, (f & 7) << 3
        tile[fa_offset(r, x):fa_offset(r, x) + 8] = rows[r, x:x + 8]
    assert not np.isnan(tile).any()
    return tile


def test_attention_tiles_are_a_permutation_and_conflict_free():
    slots = [fa_offset(f >> 3, (f & 7) << 3) for f in range(512)]
    assert sorted(slots) == list(range(0, 64 * D, 8))
    for q in range(0, 512, 8):
        assert len(set(bank_groups(slots[q:q + 8]))) == 8
    for r0 in range(0, 64, 8):
        for x in range(0, D, 8):
            assert len(set(bank_groups([fa_offset(r0 + j, x) for j in range(8)]))) == 8


def test_one_warp_of_the_attention_forward_through_the_fragments():
    """S = Q_w K^T from fragments, P = S repacked from C to A fragments (as the kernel packs it),
    O = P V through transposed V fragments: equals (Q K^T) V (small integers, exact)."""
    rng = np.random.default_rng(11)
    q, k, v = (rng.integers(-3, 4, (64, D)).astype(np.float64) for _ in range(3))
    qs, ks, vs = fa_tile(q), fa_tile(k), fa_tile(v)
    warp = 2
    qf = [ldmatrix_x4(qs, [fa_offset(warp * 16 + (lane & 15), kc * 16 + (lane >> 4) * 8) for lane in range(32)],
                      False) for kc in range(4)]
    s = np.zeros((8, 32, 4))
    for kc in range(4):
        for np_ in range(4):
            r = ldmatrix_x4(ks, [fa_offset(np_ * 16 + (lane & 7) + ((lane >> 3) >> 1) * 8,
                                           kc * 16 + ((lane >> 3) & 1) * 8) for lane in range(32)], False)
            mma(s[2 * np_], qf[kc], (r[0], r[1]))
            mma(s[2 * np_ + 1], qf[kc], (r[2], r[3]))
    o = np.zeros((8, 32, 4))
    for kc2 in range(4):
        pa = [s[2 * kc2][:, 0:2], s[2 * kc2][:, 2:4], s[2 * kc2 + 1][:, 0:2], s[2 * kc2 + 1][:, 2:4]]
        for np_ in range(4):
            r = ldmatrix_x4(vs, [fa_offset(kc2 * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                           np_ * 16 + ((lane >> 3) >> 1) * 8) for lane in range(32)], True)
            mma(o[2 * np_], pa, (r[0], r[1]))
            mma(o[2 * np_ + 1], pa, (r[2], r[3]))
    got = np.zeros((16, D))
    for nt in range(8):
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            for e in range(4):
                got[g + 8 * (e >> 1), nt * 8 + 2 * t + (e & 1)] = o[nt, lane, e]
    rows = q[warp * 16:warp * 16 + 16]
    np.testing.assert_array_equal(got, (rows @ k.T) @ v)


def test_attention_backward_fragments_of_one_block():
    """attention_bf16_backward_kernel's data movement for one query tile, with the softmax left
    out (P^T = S^T, dS^T = dP^T): per warp S^T = K_w Q^T, dV_w = S^T dO, dP^T = V_w dO^T,
    dK_w = dP^T Q; dS^T through shared memory as the kernel stores it, then each warp's
    dQ = dS K from transposed fragments. Small integers: exact."""
    rng = np.random.default_rng(12)
    q, do, k, v = (rng.integers(-2, 3, (64, D)).astype(np.float64) for _ in range(4))
    qs, dos, kts, vts = fa_tile(q), fa_tile(do), fa_tile(k), fa_tile(v)
    dst = np.full(64 * 64, np.nan)
    dk, dv, dq = np.zeros((64, D)), np.zeros((64, D)), np.zeros((64, D))

    def frags_a(tile, warp):
        return [ldmatrix_x4(tile, [fa_offset(warp * 16 + (lane & 15), kc * 16 + (lane >> 4) * 8)
                                   for lane in range(32)], False) for kc in range(4)]

    def scatter(acc, out, row0):
        for nt in range(8):
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for e in range(4):
                    out[row0 + g + 8 * (e >> 1), nt * 8 + 2 * t + (e & 1)] += acc[nt, lane, e]

    for warp in range(4):
        kf, vf = frags_a(kts, warp), frags_a(vts, warp)
        st, dpt = np.zeros((8, 32, 4)), np.zeros((8, 32, 4))
        for kc in range(4):
            for np_ in range(4):
                addrs = [fa_offset(np_ * 16 + (lane & 7) + ((lane >> 3) >> 1) * 8, kc * 16 + ((lane >> 3) & 1) * 8)
                         for lane in range(32)]
                r, w = ldmatrix_x4(qs, addrs, False), ldmatrix_x4(dos, addrs, False)
                mma(st[2 * np_], kf[kc], (r[0], r[1]))
                mma(st[2 * np_ + 1], kf[kc], (r[2], r[3]))
                mma(dpt[2 * np_], vf[kc], (w[0], w[1]))
                mma(dpt[2 * np_ + 1], vf[kc], (w[2], w[3]))
        dka, dva = np.zeros((8, 32, 4)), np.zeros((8, 32, 4))
        for kc2 in range(4):
            pa = [st[2 * kc2][:, 0:2], st[2 * kc2][:, 2:4], st[2 * kc2 + 1][:, 0:2], st[2 * kc2 + 1][:, 2:4]]
            da = [dpt[2 * kc2][:, 0:2], dpt[2 * kc2][:, 2:4], dpt[2 * kc2 + 1][:, 0:2], dpt[2 * kc2 + 1][:, 2:4]]
            for np_ in range(4):
                addrs = [fa_offset(kc2 * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, np_ * 16 + ((lane >> 3) >> 1) * 8)
                         for lane in range(32)]
                r, w = ldmatrix_x4(dos, addrs, True), ldmatrix_x4(qs, addrs, True)
                mma(dva[2 * np_], pa, (r[0], r[1]))
                mma(dva[2 * np_ + 1], pa, (r[2], r[3]))
                mma(dka[2 * np_], da, (w[0], w[1]))
                mma(dka[2 * np_ + 1], da, (w[2], w[3]))
            for lane in range(32):                           # the kernel's dS^T store
                g, t = lane >> 2, lane & 3
                for half in range(2):
                    kr = warp * 16 + g + 8 * half
                    for j in range(2):
                        off = fa_offset(kr, (2 * kc2 + j) * 8 + 2 * t)
                        dst[off:off + 2] = (da[half] if j == 0 else da[2 + half])[lane]
        scatter(dka, dk, warp * 16)
        scatter(dva, dv, warp * 16)
    assert not np.isnan(dst).any(), "dS^T tile not fully written"
    for warp in range(4):                                    # after the barrier: dQ per warp
        dqa = np.zeros((8, 32, 4))
        for kk in range(4):
            a = ldmatrix_x4(dst, [fa_offset(kk * 16 + (lane & 7) + ((lane >> 3) >> 1) * 8,
                                            warp * 16 + ((lane >> 3) & 1) * 8) for lane in range(32)], True)
            for np_ in range(4):
                r = ldmatrix_x4(kts, [fa_offset(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                                np_ * 16 + ((lane >> 3) >> 1) * 8) for lane in range(32)], True)
                mma(dqa[2 * np_], a, (r[0], r[1]))
                mma(dqa[2 * np_ + 1], a, (r[2], r[3]))
        scatter(dqa, dq, warp * 16)
    s_t = k @ q.T                       # S^T (keys x queries) = P^T here
    dp_t = v @ do.T                     # dP^T = dS^T here
    np.testing.assert_array_equal(dv, s_t @ do)
    np.testing.assert_array_equal(dk, dp_t @ q)
    np.testing.assert_array_equal(dq, dp_t.T @ k)
