"""Procedurally rendered faces for face-verification tests (no downloads, no real people).

Each identity is a fixed draw of about fifty parameters: face ellipse (width, height, chin
taper), skin colour, hair (colour, streaks, volume, length, hairline height/curve/part, or
bald), eyes (spacing, height, size, iris colour), eyebrows (height, thickness, tilt), nose
length/width, mouth width/height/lip colour, an optional beard and glasses, and a skin texture
(freckles, stripes or a birthmark) laid out by the identity's own seed. Each image of an
identity adds nuisance jitter: pose (translation +-0.08 of the half-width, in-plane rotation
+-11.5 degrees, scale 0.9-1.08), lighting (brightness, a directional gradient, a colour cast),
expression (smile, eye openness and blinks, brow raise, gaze), a random background and pixel
noise. Rendering is vectorized over images at twice the output size, then average-pooled
(anti-aliasing): about 2 ms per 32x32 face on one CPU thread.

Identity `k` is drawn from its own generator seeded by (`seed`, `k`), so
`synthetic_faces(n, m, identity_offset=o)` renders identities o..o+n-1: disjoint offsets give
disjoint people (train on offset 0, verify on offset 10_000), and identity k's images are the
same whichever range it is rendered in.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as fn

from trustfast.checks import check_number, check_tensor

# Uniform draws per identity: shape/colour parameters, then the texture layout.
_N_IDENTITY = 53
_N_FRECKLES = 14
# Uniform draws per image (pose, lighting, expression, background); noise is drawn separately.
_N_JITTER = 20

_SKIN_LIGHT = torch.tensor([0.98, 0.84, 0.74])
_SKIN_DARK = torch.tensor([0.36, 0.22, 0.14])
_HAIR = torch.tensor([[0.08, 0.06, 0.05], [0.30, 0.18, 0.09], [0.55, 0.35, 0.16],
                      [0.85, 0.70, 0.40], [0.70, 0.28, 0.10], [0.62, 0.62, 0.62],
                      [0.20, 0.20, 0.35]])
_IRIS = torch.tensor([[0.30, 0.18, 0.08], [0.20, 0.40, 0.75], [0.25, 0.55, 0.30],
                      [0.45, 0.48, 0.52], [0.08, 0.06, 0.05]])


def _check_int(name: str, value, minimum: int) -> None:
    """An int >= minimum: a str or bool is a TypeError, a smaller int a ValueError; a float is
    a ValueError for now (tests/faces asserts it; the family's TypeError is the target)."""
    if isinstance(value, float):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r} (float)")
    check_number(name, value, low=minimum, integer=True)


def _mix(seed: int, key: int) -> int:
    # distinct, well-spread generator seeds per (seed, identity); torch wants < 2**63
    return (seed * 0x9E3779B97F4A7C15 + key * 0xBF58476D1CE4E5B9 + 0x94D049BB) % (2**63 - 1)


def _lerp(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


def _coverage(sdf: torch.Tensor, px: float) -> torch.Tensor:
    """Soft inside-mask of a signed distance (negative inside), about one render pixel wide."""
    return torch.sigmoid(-sdf / (0.4 * px))


def _ellipse_sdf(x, y, a, b):
    # first-order signed distance to an ellipse with semi-axes a, b (exact for circles)
    r = torch.sqrt((x / a) ** 2 + (y / b) ** 2 + 1e-12)
    return (r - 1.0) * torch.minimum(torch.as_tensor(a), torch.as_tensor(b))


def _box_sdf(x, y, hw, hh):
    dx, dy = x.abs() - hw, y.abs() - hh
    outside = torch.sqrt(dx.clamp_min(0) ** 2 + dy.clamp_min(0) ** 2)
    return outside + torch.maximum(dx, dy).clamp_max(0)


def _paint(img: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """img [N,3,H,W] <- colour [N,3,1,1] (or [N,3,H,W]) where mask [N,H,W] is 1."""
    return torch.lerp(img, colour.to(img.dtype), mask.unsqueeze(1))


def _identity_draws(num_identities: int, images_per_identity: int, seed: int,
                    identity_offset: int, size: int):
    ident, freckles, jitter, noise = [], [], [], []
    for k in range(num_identities):
        g = torch.Generator().manual_seed(_mix(seed, identity_offset + k))
        ident.append(torch.rand(_N_IDENTITY, generator=g))
        freckles.append(torch.rand(_N_FRECKLES, 2, generator=g))
        jitter.append(torch.rand(images_per_identity, _N_JITTER, generator=g))
        noise.append(torch.randn(images_per_identity, 3, size, size, generator=g))
    return torch.stack(ident), torch.stack(freckles), torch.cat(jitter), torch.cat(noise)


def _render(u: torch.Tensor, fr: torch.Tensor, j: torch.Tensor, noise: torch.Tensor,
            size: int, supersample: int = 2) -> torch.Tensor:
    """u [N,_N_IDENTITY], fr [N,_N_FRECKLES,2], j [N,_N_JITTER] uniforms and standard normal
    noise [N,3,S,S] -> images [N,3,S,S]. Every operation is per image."""
    n = u.shape[0]
    res = size * supersample
    px = 2.0 / res
    axis = (torch.arange(res, dtype=torch.float32) + 0.5) * px - 1.0
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    gx, gy = gx.unsqueeze(0), gy.unsqueeze(0)  # [1,R,R], y grows downwards

    def p(col):  # one identity parameter per image, broadcastable over [N,R,R]
        return u[:, col].view(n, 1, 1)

    def q(col):  # one jitter parameter per image
        return j[:, col].view(n, 1, 1)

    def rgb(t):  # [N,3] -> [N,3,1,1]
        return t.view(n, 3, 1, 1)

    # ---- background: random colour with a random linear gradient (pure nuisance) ----
    bg0 = rgb(j[:, 0:3] * 0.9 + 0.05)
    ang = q(3) * 2 * math.pi
    ramp = (torch.cos(ang) * gx + torch.sin(ang) * gy).unsqueeze(1)
    img = (bg0 + 0.15 * ramp).expand(n, 3, res, res).clone()

    # ---- pose: face coordinates = R(-rot) (p - t) / scale ----
    rot = _lerp(q(4), -0.2, 0.2)  # +-11.5 degrees
    scale = _lerp(q(5), 0.9, 1.08)
    tx, ty = _lerp(q(6), -0.08, 0.08), _lerp(q(7), -0.08, 0.08)
    cr, sr = torch.cos(rot), torch.sin(rot)
    x0, y0 = (gx - tx) / scale, (gy - ty) / scale
    x, y = cr * x0 + sr * y0, -sr * x0 + cr * y0

    # ---- identity geometry and colours ----
    face_w, face_h = _lerp(p(0), 0.44, 0.62), _lerp(p(1), 0.6, 0.78)
    face_cy, chin = _lerp(p(2), -0.02, 0.1), _lerp(p(3), 0.0, 0.4)
    tone = u[:, 4:5]
    skin = (_SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * tone) + (u[:, 5:8] - 0.5) * 0.16
    skin = rgb(skin.clamp(0, 1))
    # a mix of two palette colours, plus a tint
    hair_idx = (u[:, 8] * len(_HAIR)).long().clamp_max(len(_HAIR) - 1)
    hair_idx2 = (u[:, 48] * len(_HAIR)).long().clamp_max(len(_HAIR) - 1)
    hair = torch.lerp(_HAIR[hair_idx], _HAIR[hair_idx2], u[:, 49:50] * 0.5)
    hair = rgb((hair + (u[:, 9:12] - 0.5) * 0.2).clamp(0, 1))
    # hair texture: streaks at an identity-specific angle and spacing (none for some)
    streak_a, streak_f = p(50) * math.pi, _lerp(p(51), 10.0, 30.0)
    streak_amp = (p(52) - 0.4).clamp_min(0) * 0.6
    streaks = 1 + streak_amp * torch.sin(streak_f * (torch.cos(streak_a) * x
                                                      + torch.sin(streak_a) * y))
    hair_tex = (hair * streaks.unsqueeze(1)).clamp(0, 1)
    bald = p(12) < 0.1
    hair_vol = _lerp(p(13), 1.05, 1.3)
    hair_len = _lerp(p(14), -0.25, 0.85)
    hairline = _lerp(p(15), -0.62, -0.25)
    hair_curve, hair_part = _lerp(p(16), -0.6, 0.8), _lerp(p(17), -0.35, 0.35)
    eye_dx, eye_y = _lerp(p(18), 0.16, 0.27), _lerp(p(19), -0.18, 0.02)
    eye_rx, eye_ry = _lerp(p(20), 0.07, 0.12), _lerp(p(21), 0.035, 0.07)
    iris_idx = (u[:, 22] * len(_IRIS)).long().clamp_max(len(_IRIS) - 1)
    iris = rgb((_IRIS[iris_idx] + (u[:, 23:26] - 0.5) * 0.1).clamp(0, 1))
    brow_h, brow_t = _lerp(p(26), 0.07, 0.15), _lerp(p(27), 0.015, 0.045)
    brow_tilt, brow_len = _lerp(p(28), -0.45, 0.45), _lerp(p(29), 0.06, 0.12)
    nose_len, nose_w = _lerp(p(30), 0.1, 0.26), _lerp(p(31), 0.02, 0.06)
    mouth_y, mouth_w = _lerp(p(32), 0.26, 0.42), _lerp(p(33), 0.1, 0.24)
    lip_t = _lerp(p(34), 0.018, 0.045)
    lips = rgb((skin.view(n, 3) * torch.tensor([0.95, 0.55, 0.55])
                + (u[:, 35:38] - 0.5) * 0.2).clamp(0, 1))
    texture = u[:, 38]  # < 0.3 none, < 0.55 freckles, < 0.8 stripes, else a birthmark
    beard = p(39) < 0.25
    glasses = p(40) < 0.2
    stripe_f, stripe_a = _lerp(p(41), 8.0, 18.0), p(42) * math.pi
    stripe_colour = rgb(u[:, 43:46])
    mark_x, mark_y = _lerp(p(46), -0.35, 0.35), _lerp(p(47), -0.1, 0.4)

    # ---- expression (per image) ----
    smile = _lerp(q(8), -0.4, 1.0)
    openness = torch.where(q(9) < 0.1, _lerp(q(9), 1.0, 3.0) * 0.15, _lerp(q(9), 0.6, 1.15))
    brow_raise = _lerp(q(10), -0.02, 0.04)
    gaze_x, gaze_y = _lerp(q(11), -0.35, 0.35), _lerp(q(12), -0.2, 0.2)

    # ---- neck and back hair ----
    neck = _box_sdf(x, y - (face_cy + face_h * 0.9), face_w * 0.45, face_h * 0.5)
    img = _paint(img, _coverage(neck, px), skin * 0.8)
    hx, hy = x, y - (face_cy - 0.08)
    back = torch.maximum(_ellipse_sdf(hx, hy, face_w * hair_vol, face_h * hair_vol * 0.95),
                         y - (face_cy + hair_len))
    img = _paint(img, _coverage(back, px) * (~bald), hair_tex)

    # ---- face: an ellipse whose lower half tapers towards the chin ----
    fy = y - face_cy
    taper = 1.0 - chin * (fy / face_h).clamp(0, 1) ** 2
    face_sdf = _ellipse_sdf(x, fy, face_w * taper, face_h)
    face = _coverage(face_sdf, px)
    img = _paint(img, face, skin)

    # ---- skin texture, laid out by the identity's seed ----
    # each kind is rendered only for the images whose identity has it
    kind = texture
    tex_mask = torch.zeros_like(face)
    tex_colour = (skin * 0.55).expand(n, 3, 1, 1).clone()
    sel = torch.nonzero((kind >= 0.3) & (kind < 0.55)).flatten()  # freckles
    if len(sel):
        fx = _lerp(fr[sel, :, 0], -0.7, 0.7).view(len(sel), -1, 1, 1) * face_w[sel].unsqueeze(1)
        fyy = _lerp(fr[sel, :, 1], -0.2, 0.6).view(len(sel), -1, 1, 1) * face_h[sel].unsqueeze(1)
        d2 = ((x[sel].unsqueeze(1) - fx) ** 2 + (fy[sel].unsqueeze(1) - fyy) ** 2).amin(1)
        tex_mask[sel] = _coverage(d2.sqrt() - 0.03, px) * 0.7
    sel = torch.nonzero((kind >= 0.55) & (kind < 0.8)).flatten()  # stripes (face paint)
    if len(sel):
        a = stripe_a[sel]
        wave = torch.sin(stripe_f[sel] * (torch.cos(a) * x[sel] + torch.sin(a) * y[sel]))
        tex_mask[sel] = 0.45 * (0.5 + 0.5 * wave)
        tex_colour[sel] = stripe_colour[sel]
    sel = torch.nonzero(kind >= 0.8).flatten()  # a birthmark
    if len(sel):
        mark = _ellipse_sdf(x[sel] - mark_x[sel] * face_w[sel],
                            fy[sel] - mark_y[sel] * face_h[sel], 0.07, 0.05)
        tex_mask[sel] = _coverage(mark, px) * 0.8
    img = _paint(img, tex_mask * face, tex_colour)

    # ---- beard (below the nose), fringe above the hairline ----
    beard_sdf = (mouth_y - 0.08 - fy) + 0.0 * x
    img = _paint(img, _coverage(beard_sdf, px) * face * beard * 0.9, hair * 0.9)
    line = hairline * face_h + hair_curve * x ** 2 + hair_part * x
    fringe = torch.maximum(face_sdf, fy - line)
    img = _paint(img, _coverage(fringe, px) * (~bald), hair_tex)

    # ---- eyes, brows, glasses (mirrored about the face's vertical axis) ----
    ax = x.abs()
    ex, ey = ax - eye_dx, fy - eye_y
    ry = eye_ry * openness
    sclera = _coverage(_ellipse_sdf(ex, ey, eye_rx, ry), px)
    img = _paint(img, sclera, torch.full_like(skin, 0.95))
    sign = torch.sign(x)
    iris_sdf = _ellipse_sdf(ex - gaze_x * eye_rx * sign, ey - gaze_y * eye_ry,
                            eye_ry * 0.95, eye_ry * 0.95)
    img = _paint(img, _coverage(iris_sdf, px) * sclera, iris)
    bx, by = ex, ey + brow_h + brow_raise
    tilt_c, tilt_s = torch.cos(brow_tilt), torch.sin(brow_tilt)
    brow = _box_sdf(tilt_c * bx + tilt_s * by, -tilt_s * bx + tilt_c * by, brow_len, brow_t)
    img = _paint(img, _coverage(brow, px), hair * 0.7)
    rim = (_ellipse_sdf(ex, ey, eye_rx * 1.6, eye_rx * 1.3)).abs() - 0.012
    bridge = _box_sdf(x, ey + 0.01, eye_dx - eye_rx * 1.6, 0.01)
    frames = torch.minimum(rim, bridge)
    img = _paint(img, _coverage(frames, px) * glasses, torch.full_like(skin, 0.1))

    # ---- nose and mouth ----
    nose_top = eye_y + 0.04
    nose = _box_sdf(x, fy - (nose_top + nose_len / 2), nose_w * 0.5, nose_len / 2)
    nostrils = _ellipse_sdf(ax - nose_w, fy - (nose_top + nose_len), nose_w * 0.8, 0.02)
    img = _paint(img, _coverage(torch.minimum(nose, nostrils), px) * 0.6, skin * 0.6)
    curve = mouth_y + smile * 0.07 * (1 - (x / mouth_w) ** 2)
    mouth = torch.maximum((fy - curve).abs() - lip_t, ax - mouth_w)
    img = _paint(img, _coverage(mouth, px), lips)

    # ---- lighting: brightness, a directional gradient, a colour cast; then noise ----
    light_ang = q(13) * 2 * math.pi
    light = _lerp(q(14), 0.75, 1.12) * (1 + _lerp(q(15), 0.0, 0.3)
                                       * (torch.cos(light_ang) * gx + torch.sin(light_ang) * gy))
    cast = rgb(_lerp(j[:, 16:19], 0.92, 1.08))
    img = img * light.unsqueeze(1) * cast
    img = fn.avg_pool2d(img, supersample) if supersample > 1 else img
    sigma = _lerp(j[:, 19], 0.01, 0.035).view(n, 1, 1, 1)
    img = img + sigma * noise
    return img.clamp(0.0, 1.0)


def synthetic_faces(num_identities: int, images_per_identity: int, size: int = 32,
                    seed: int = 0, identity_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [N, 3, size, size] in [0, 1], labels int64 [N]) with
    N = num_identities * images_per_identity, ordered identity by identity.

    Labels are global identity ids `identity_offset .. identity_offset + num_identities - 1`:
    two calls with the same `seed` and disjoint id ranges render disjoint identities (use one
    range to train, another to verify). Deterministic for (`seed`, `identity_offset`).
    """
    _check_int("num_identities", num_identities, 1)
    _check_int("images_per_identity", images_per_identity, 1)
    _check_int("size", size, 16)
    _check_int("seed", seed, 0)
    _check_int("identity_offset", identity_offset, 0)
    ident, freckles, jitter, noise = _identity_draws(num_identities, images_per_identity, seed,
                                                     identity_offset, size)
    u = ident.repeat_interleave(images_per_identity, dim=0)
    fr = freckles.repeat_interleave(images_per_identity, dim=0)
    # bounds the temporaries: ~8 MB per [chunk, 2S, 2S] float tensor, at any size
    chunk = max(1, 2**19 // (size * size))
    images = torch.cat([_render(u[i:i + chunk], fr[i:i + chunk], jitter[i:i + chunk],
                                noise[i:i + chunk], size) for i in range(0, len(u), chunk)])
    labels = torch.arange(identity_offset, identity_offset + num_identities)
    return images, labels.repeat_interleave(images_per_identity)


def face_pairs(labels: torch.Tensor, num_pairs: int,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(idx_a, idx_b, same) for `num_pairs` distinct pairs of distinct images, in random order:
    `num_pairs // 2` genuine pairs (same label; identity drawn uniformly among those with two
    or more images, then two of its images) and the rest impostor pairs (two images drawn
    uniformly with different labels). Raises ValueError if too few distinct pairs exist."""
    check_tensor("labels", labels, ndim=1, hint="a 1-D integer tensor of identity labels")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        # a ValueError, not the family's TypeError: tests/faces asserts it (see issue 17 notes)
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype}")
    _check_int("num_pairs", num_pairs, 2)
    _check_int("seed", seed, 0)
    labels = labels.cpu()
    n_genuine, n_impostor = num_pairs // 2, num_pairs - num_pairs // 2
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    possible_genuine = int((counts * (counts - 1) // 2).sum())
    possible_impostor = len(labels) * (len(labels) - 1) // 2 - possible_genuine
    if possible_genuine < n_genuine or possible_impostor < n_impostor:
        raise ValueError(f"num_pairs={num_pairs} needs {n_genuine} genuine and {n_impostor} "
                         f"impostor pairs, but labels allow {possible_genuine} and "
                         f"{possible_impostor}")
    g = torch.Generator().manual_seed(seed)
    members = [torch.nonzero(inverse == c).flatten() for c in range(len(classes))]
    eligible = [m for m in members if len(m) >= 2]
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int, bool]] = []
    while len(pairs) < n_genuine:
        m = eligible[int(torch.randint(len(eligible), (1,), generator=g))]
        i, k = torch.randperm(len(m), generator=g)[:2].tolist()
        key = (min(int(m[i]), int(m[k])), max(int(m[i]), int(m[k])))
        if key not in seen:
            seen.add(key)
            pairs.append((*key, True))
    while len(pairs) < num_pairs:
        i, k = torch.randint(len(labels), (2,), generator=g).tolist()
        key = (min(i, k), max(i, k))
        if labels[i] != labels[k] and key not in seen:
            seen.add(key)
            pairs.append((*key, False))
    order = torch.randperm(num_pairs, generator=g).tolist()
    pairs = [pairs[i] for i in order]
    idx_a = torch.tensor([a for a, _, _ in pairs], dtype=torch.int64)
    idx_b = torch.tensor([b for _, b, _ in pairs], dtype=torch.int64)
    same = torch.tensor([s for _, _, s in pairs], dtype=torch.bool)
    return idx_a, idx_b, same
