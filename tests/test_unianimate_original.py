"""UniAnimate-DiT's pure loop parts pinned to the ORIGINAL's own functions (issue 15).

Every literal below (SCHEDULES ... TILED) was computed by running the original code of
ali-vilab/UniAnimate-DiT at commit 884ac92aab496a6f0fdc5733eec1799519fb0cc1 (the fetched snapshot's
``diffsynth/pipelines/wan_video.py`` = WV, ``diffsynth/schedulers/flow_match.py`` = FM and
``diffsynth/models/wan_video_vae.py`` = VAE, imported unchanged in a scratch folder outside this
repository, with stubs only for the model/prompter modules they import) on the synthetic inputs
defined in this file (``wave``, ``fake_velocity``, ``fake_decode``, ``t_mods``), in float32 on CPU:

* SCHEDULES, STEPS_5: ``FlowMatchScheduler(shift=5, sigma_min=0.0, extra_one_step=True)`` (WV:766),
  ``set_timesteps(n, denoising_strength=1.0, shift=5.0)`` (FM:18-37, called as at WV:1015): its
  ``sigmas`` and ``timesteps``; then ``step(v, timesteps[i], x)`` (FM:40-50) for the 5 steps of n=5
  from ``x = wave((1,4,3,2,2), 0.37, 0.11)`` with ``v = wave((1,4,3,2,2), 0.91, 0.3, 1.7)``: after each
  step ``[x.double().sum(), x[0,1,2,1,0], x[0,3,0,0,1]]``.
* WINDOWS: ``list(context_scheduler(0, 31, T, context_size=cs, context_stride=1,
  context_overlap=ov))`` (WV:731-757) with the last window replaced as
  ``WanUniAnimateLongVideoPipeline.__call__`` replaces it (WV:1032-1049); each window is contiguous,
  given as (first, last) latent frame.
* LONG: the original's whole ``WanUniAnimateLongVideoPipeline.__call__`` (WV:977-1166), cfg_scale=1,
  torch_dtype float32, 16x16 pixels (2x2 latents), ``4T-3`` pose frames whose value is
  ``3 * frame % 256``, with ``model_fn_wan_video`` replaced by ``fake_velocity(x, timestep,
  add_condition.mean())``, ``dwpose_embedding`` by the mean of its input broadcast to the pose-feature
  shape (then the original's own ``.to(torch.bfloat16)``), the seeded noise by
  ``wave((1,16,T,2,2), 0.37, 0.11)`` and window k's ``torch.randn_like`` (its private first two
  frames) by ``wave((1,16,2,2,2), 0.53, k)``; the latents handed to ``decode_video``: per-frame sums,
  a position-weighted sum ``sum(x * cos(0.01 * flat_index))`` and elements by flat index (float64 of
  the float32 result); ``conditions``: ``add_condition.mean()`` of each window's first call.
* TEACACHE: ``TeaCache(12, rel_l1_thresh=th, model_id="Wan2.1-I2V-14B-720P")`` (WV:289-338),
  ``check(dit, x, t_mod)`` called on ``t_mods(12, 16)`` in order: whether it computes (``not
  check(...)``) and ``accumulated_rel_l1_distance`` after each call. POLY: ``np.poly1d`` of that
  object's ``coefficients`` (the rescale function of WV:317) at a few distances.
* TILED: ``WanVideoVAE.tiled_decode(z, "cpu", tile_size, tile_stride)`` (VAE:643-692, with its
  ``build_1d_mask``/``build_mask``, VAE:621-640), upsampling factor 8, its ``self.model.decode``
  replaced by ``fake_decode``, ``z = wave((1,16,2,H,W), 0.7, 0.0, 1.2)``; output checksums (float64 sums
  of the float32 output, number of elements at exactly +-1 after the clamp) and ``[frame, channel, y,
  x, value]`` points (several in the blended ramps).

Tolerance: the project repeats the original's float32 operations in the same order, and on the
machine that computed the literals every float32 result is bitwise equal. rel 1e-6 (about 8
float32 ulps) with abs 1e-7 for values near 0 only allows another torch build's vectorised
reductions / transcendental kernels to differ in the last bits; any change of formula is far
larger (ramps that take the minimum where they meet instead of the original's overwrite moved a
tiled sum by 3e-4 relative). Integer results (windows, plans, clamped counts) are exact.
"""

from __future__ import annotations

import math

import pytest
import torch

from zoo.families.unianimate_dit.sampler import (
    context_windows,
    flow_schedule,
    flow_step,
    long_video_step,
    teacache_distances,
    teacache_plan,
    teacache_rescale,
)
from zoo.families.unianimate_dit.vae_tiling import tiled_decode

REL, ABS = 1e-6, 1e-7


def wave(shape: tuple[int, ...], a: float, b: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """A deterministic float32 tensor ``scale * sin(a * flat_index + b)`` (computed in float64)."""
    n = math.prod(shape)
    return (torch.sin(torch.arange(n, dtype=torch.float64) * a + b) * scale).to(torch.float32).view(shape)


def fake_velocity(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The stand-in for the DiT: a smooth function of the latents, the timestep and the window's pose condition."""
    return torch.sin((1.3 * x + t / 1000.0).double()).to(x.dtype) + c


def fake_decode(z: torch.Tensor) -> torch.Tensor:
    """The stand-in for the VAE decoder: ``(1, C, T, h, w)`` -> ``(1, 3, 4T-3, 8h, 8w)``, unclamped and
    depending on the position inside the tile and on the tile's mean, so overlapping tiles disagree."""
    _, _, t, h, w = z.shape
    frames = [0] + [i for i in range(1, t) for _ in range(4)]
    x = z[:, :3, frames].repeat_interleave(8, 3).repeat_interleave(8, 4)
    yy = torch.arange(8 * h, dtype=torch.float32).view(-1, 1) / (8 * h)
    xx = torch.arange(8 * w, dtype=torch.float32).view(1, -1) / (8 * w)
    ff = torch.arange(len(frames), dtype=torch.float32).view(-1, 1, 1) * 0.05
    return 0.7 * x + 0.4 * z.mean() + 0.3 * yy - 0.2 * xx + ff


def t_mods(n: int, dim: int) -> list[torch.Tensor]:
    """Synthetic ``t_mod`` tensors (1, 6, dim) whose step-to-step rel-L1 distances are 0.007-0.024."""
    out = []
    for i in range(n):
        base = wave((1, 6, dim), 0.731, 0.2)
        out.append(base * (1.0 + 0.001 * i * i) + wave((1, 6, dim), 1.37 + 0.1 * i, 0.5 * i, 0.003 * (i % 4 + 1)))
    return out


def close(value: float, golden: float) -> bool:
    return value == pytest.approx(golden, rel=REL, abs=ABS)


# ---- golden values from the original (see the module docstring) -----------------------------------

SCHEDULES = {
    4: ([1.0, 0.9375, 0.8333333134651184, 0.625], [1000.0, 937.5, 833.3333129882812, 625.0]),
    5: (
        [1.0, 0.9523810148239136, 0.882352888584137, 0.7692307829856873, 0.5555555820465088],
        [1000.0, 952.3810424804688, 882.3529052734375, 769.2307739257812, 555.5556030273438],
    ),
    6: (
        [1.0, 0.9615384936332703, 0.9090908765792847, 0.8333333134651184, 0.714285671710968, 0.5],
        [1000.0, 961.5385131835938, 909.0908813476562, 833.3333129882812, 714.28564453125, 500.0],
    ),
    50: (
        [
            1.0,
            0.9959349632263184,
            0.9917354583740234,
            0.9873948693275452,
            0.982905924320221,
            0.97826087474823,
            0.9734513759613037,
            0.9684684872627258,
            0.9633027911186218,
            0.9579439759254456,
            0.9523810148239136,
            0.9466019868850708,
            0.9405940771102905,
            0.9343434572219849,
            0.9278350472450256,
            0.9210526347160339,
            0.9139785170555115,
            0.9065934419631958,
            0.8988763689994812,
            0.8908045887947083,
            0.882352888584137,
            0.8734939694404602,
            0.8641974925994873,
            0.8544303774833679,
            0.8441558480262756,
            0.8333333134651184,
            0.821917712688446,
            0.8098591566085815,
            0.7971014976501465,
            0.7835820913314819,
            0.7692307233810425,
            0.7539682388305664,
            0.737704873085022,
            0.7203389406204224,
            0.7017543315887451,
            0.6818181872367859,
            0.6603773832321167,
            0.6372548937797546,
            0.6122448444366455,
            0.585106372833252,
            0.555555522441864,
            0.5232557654380798,
            0.4878048598766327,
            0.44871795177459717,
            0.4054053723812103,
            0.357142835855484,
            0.3030303120613098,
            0.24193546175956726,
            0.17241378128528595,
            0.09259258210659027,
        ],
        [
            1000.0,
            995.9349365234375,
            991.7354736328125,
            987.3948974609375,
            982.9059448242188,
            978.2608642578125,
            973.4513549804688,
            968.468505859375,
            963.3027954101562,
            957.9439697265625,
            952.3810424804688,
            946.6019897460938,
            940.5940551757812,
            934.3434448242188,
            927.8350219726562,
            921.0526123046875,
            913.978515625,
            906.5934448242188,
            898.8763427734375,
            890.8045654296875,
            882.3529052734375,
            873.4939575195312,
            864.197509765625,
            854.4303588867188,
            844.1558227539062,
            833.3333129882812,
            821.917724609375,
            809.859130859375,
            797.1015014648438,
            783.5820922851562,
            769.230712890625,
            753.96826171875,
            737.7048950195312,
            720.3389282226562,
            701.7543334960938,
            681.8181762695312,
            660.3773803710938,
            637.2548828125,
            612.244873046875,
            585.1063842773438,
            555.5555419921875,
            523.2557373046875,
            487.80487060546875,
            448.71795654296875,
            405.4053649902344,
            357.142822265625,
            303.0303039550781,
            241.93545532226562,
            172.41378784179688,
            92.59258270263672,
        ],
    ),
}

STEPS_5 = [
    [1.6280678622424603, 0.8420591950416565, 0.8988239765167236],
    [1.6157743073999882, 0.7236103415489197, 0.8328360319137573],
    [1.5959155596792698, 0.5322703123092651, 0.726240336894989],
    [1.5584047585725784, 0.17085000872612, 0.5248928070068359],
    [1.4608761072158813, -0.7688429355621338, 0.0013892054557800293],
]

WINDOWS = {
    (21, 21, 4): [(0, 20)],
    (25, 21, 4): [(0, 20), (4, 24)],
    (38, 21, 4): [(0, 20), (17, 37)],
    (39, 21, 4): [(0, 20), (17, 37), (18, 38)],
    (60, 21, 4): [(0, 20), (17, 37), (34, 54), (39, 59)],
    (30, 9, 3): [(0, 8), (6, 14), (12, 20), (18, 26), (21, 29)],
    (11, 5, 2): [(0, 4), (3, 7), (6, 10)],
}

LONG = {
    (25, 21, 4, 4): {
        "frame_sums": [
            -44.51046046614647,
            -45.22667524218559,
            -43.72111636400223,
            -44.63882541656494,
            -46.75877645611763,
            -45.2921986579895,
            -45.23476728796959,
            -45.68387681245804,
            -47.77542054653168,
            -47.31633323431015,
            -45.44213452935219,
            -45.39547064900398,
            -47.20342975854874,
            -47.86665263772011,
            -45.74827355146408,
            -45.2086620926857,
            -46.61100670695305,
            -48.19499412178993,
            -46.155224561691284,
            -45.14746421575546,
            -46.10425400733948,
            -49.572283536195755,
            -48.098304599523544,
            -46.65003964304924,
            -47.14013075828552,
        ],
        "weighted": 22.70316687457774,
        "elements": {
            "0": -0.7508852481842041,
            "5": -0.6658920645713806,
            "77": -0.8096134662628174,
            "130": -0.8951197266578674,
            "800": -0.6274510622024536,
            "1599": -0.5175834894180298,
        },
        "conditions": [0.453125, 0.51171875],
    },
    (39, 21, 4, 5): {
        "frame_sums": [
            -41.3795802295208,
            -42.08306476473808,
            -41.92650085687637,
            -41.852838814258575,
            -41.89847892522812,
            -42.015946954488754,
            -41.9572828412056,
            -41.86256945133209,
            -41.876499712467194,
            -41.983946681022644,
            -41.99428841471672,
            -41.88293296098709,
            -41.8585364818573,
            -41.947306007146835,
            -42.02224525809288,
            -41.90416306257248,
            -41.85194221138954,
            -41.91986033320427,
            -42.03086733818054,
            -43.006909638643265,
            -43.29467451572418,
            -44.063648998737335,
            -44.17910152673721,
            -44.11779251694679,
            -44.02439525723457,
            -44.04148504137993,
            -44.149060010910034,
            -44.153833627700806,
            -44.044599145650864,
            -44.02242869138718,
            -44.113151878118515,
            -44.18199521303177,
            -44.06638213992119,
            -44.01478499174118,
            -44.085269182920456,
            -44.191875129938126,
            -44.08664861321449,
            -44.01496735215187,
            -44.06516608595848,
        ],
        "weighted": 12.752336438924328,
        "elements": {
            "0": -0.6864615678787231,
            "5": -0.5908864736557007,
            "77": -0.7544103860855103,
            "130": -0.8810739517211914,
            "1248": -0.5546872615814209,
            "2495": -0.7768076658248901,
        },
        "conditions": [0.453125, 0.5, 0.5],
    },
    (30, 9, 3, 4): {
        "frame_sums": [
            -30.737425714731216,
            -31.580281138420105,
            -31.808895021677017,
            -32.03167086839676,
            -31.315319567918777,
            -30.275302946567535,
            -31.62404215335846,
            -32.067589700222015,
            -38.484176337718964,
            -44.19410690665245,
            -45.10887509584427,
            -45.78446850180626,
            -45.51090982556343,
            -44.39793840050697,
            -51.655130207538605,
            -59.33818078041077,
            -59.310092091560364,
            -58.429745972156525,
            -58.20318794250488,
            -59.17621952295303,
            -53.463211357593536,
            -46.75682747364044,
            -45.93837985396385,
            -42.38683921098709,
            -42.83267721533775,
            -42.33126997947693,
            -41.1672200858593,
            -37.44404378533363,
            -38.10329645872116,
            -37.828758895397186,
        ],
        "weighted": -22.313834972540484,
        "elements": {
            "0": -0.5572910308837891,
            "5": -0.4567681550979614,
            "77": -0.9870679378509521,
            "130": -0.6705056428909302,
            "960": -0.40976575016975403,
            "1919": -0.6228688955307007,
        },
        "conditions": [0.1728515625, 0.455078125, 0.73828125, 0.490234375, 0.296875],
    },
}

TEACACHE = {
    0.05: (
        [True, True, True, True, True, True, True, True, True, True, True, True],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ),
    0.1: (
        [True, False, True, True, True, False, True, True, True, True, True, True],
        [0.0, 0.055429877036278226, 0.0, 0.0, 0.0, 0.09279173297520876, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ),
    0.2: (
        [True, False, False, True, False, True, False, True, False, True, False, True],
        [
            0.0,
            0.055429877036278226,
            0.15422335238372814,
            0.0,
            0.1214516140300278,
            0.0,
            0.12679891940477034,
            0.0,
            0.1451450589578929,
            0.0,
            0.15803604125134352,
            0.0,
        ],
    ),
    0.3: (
        [True, False, False, False, True, False, False, True, False, False, True, True],
        [
            0.0,
            0.055429877036278226,
            0.15422335238372814,
            0.2880338027203588,
            0.0,
            0.09279173297520876,
            0.2195906523799791,
            0.0,
            0.1451450589578929,
            0.28968410436007225,
            0.0,
            0.0,
        ],
    ),
    0.5: (
        [True, False, False, False, False, True, False, False, False, True, False, True],
        [
            0.0,
            0.055429877036278226,
            0.15422335238372814,
            0.2880338027203588,
            0.4094854167503866,
            0.0,
            0.12679891940477034,
            0.27484137361050165,
            0.4199864325683945,
            0.0,
            0.15803604125134352,
            0.0,
        ],
    ),
    100.0: (
        [True, False, False, False, False, False, False, False, False, False, False, True],
        [
            0.0,
            0.055429877036278226,
            0.15422335238372814,
            0.2880338027203588,
            0.4094854167503866,
            0.5022771497255953,
            0.6290760691303656,
            0.777118523336097,
            0.9222635822939899,
            1.0668026276961693,
            1.2248386689475128,
            0.0,
        ],
    ),
}

POLY = {
    0.0: -0.0417769401,
    0.001: -0.0255274254260254,
    0.005: 0.032273038874125005,
    0.01: 0.089347675166,
    0.02: 0.159823977196,
    0.05: 0.17431320115000004,
    0.1: 0.8355514499000006,
    0.2: 18.407696359900005,
}

TILED = {
    (40, 70, (30, 52), (15, 26)): {
        "sum": 387692.9491593059,
        "abs": 1460274.6886948505,
        "weighted": -142.49723635807484,
        "clamped": 167435,
        "shape": (1, 3, 5, 320, 560),
        "points": [
            [0, 0, 0, 5, -0.002400138648226857],
            [0, 1, 130, 200, 0.3121946454048157],
            [1, 2, 160, 280, -0.35106977820396423],
            [4, 0, 319, 559, -0.5297759771347046],
            [2, 1, 123, 215, -0.6611557602882385],
            [3, 2, 238, 411, -0.09421122074127197],
        ],
    },
    (20, 40, (30, 52), (15, 26)): {
        "sum": 110573.09805508851,
        "abs": 417724.97588799254,
        "weighted": 141.41861252489343,
        "clamped": 51429,
        "shape": (1, 3, 5, 160, 320),
        "points": [
            [0, 0, 0, 5, -0.0031266571022570133],
            [0, 1, 130, 200, 0.8275244235992432],
            [1, 2, 80, 160, 0.47949668765068054],
            [4, 0, 159, 319, 0.9530797600746155],
            [2, 1, 123, 215, 0.7789188623428345],
            [3, 2, 159, 319, -0.42833659052848816],
        ],
    },
    (14, 23, (8, 12), (3, 5)): {
        "sum": 45642.967179445426,
        "abs": 167976.46706232132,
        "weighted": 349.23253890815636,
        "clamped": 18749,
        "shape": (1, 3, 5, 112, 184),
        "points": [
            [0, 0, 0, 5, -0.010310252197086811],
            [0, 1, 111, 183, 0.0501285046339035],
            [1, 2, 56, 92, -0.050037164241075516],
            [4, 0, 111, 183, -0.3338530659675598],
            [2, 1, 27, 47, -0.5039494633674622],
            [3, 2, 62, 91, 0.04346953332424164],
        ],
    },
    (13, 21, (6, 10), (4, 6)): {
        "sum": 38367.94061869985,
        "abs": 142519.17637921651,
        "weighted": -478.20462239000256,
        "clamped": 14887,
        "shape": (1, 3, 5, 104, 168),
        "points": [
            [0, 0, 0, 5, -0.012525931000709534],
            [0, 1, 103, 167, 0.7152213454246521],
            [1, 2, 52, 84, 0.9138758778572083],
            [4, 0, 103, 167, -0.5273842215538025],
            [2, 1, 35, 55, 0.9882979989051819],
            [3, 2, 46, 75, -0.6484914422035217],
        ],
    },
}


# ---- (a) flow-match schedule, shift 5 ----------------------------------------------------------


@pytest.mark.parametrize("steps", sorted(SCHEDULES))
def test_flow_schedule_matches_original(steps: int) -> None:
    sigmas = flow_schedule(steps)
    golden_sigmas, golden_timesteps = SCHEDULES[steps]
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,) and float(sigmas[-1]) == 0.0
    assert sigmas[:-1].tolist() == pytest.approx(golden_sigmas, rel=REL, abs=ABS)
    # the loop's timestep for step i is sigmas[i:i+1] * 1000
    assert [float(sigmas[i : i + 1] * 1000) for i in range(steps)] == pytest.approx(golden_timesteps, rel=REL)


def test_flow_step_matches_original() -> None:
    sigmas = flow_schedule(5)
    x = wave((1, 4, 3, 2, 2), 0.37, 0.11)
    v = wave((1, 4, 3, 2, 2), 0.91, 0.3, 1.7)
    for i, (total, a, b) in enumerate(STEPS_5):
        x = flow_step(x, v, sigmas, i)
        assert close(float(x.double().sum()), total), i
        assert close(float(x[0, 1, 2, 1, 0]), a) and close(float(x[0, 3, 0, 0, 1]), b), i


# ---- (b) long-video windows and their averaging -------------------------------------------------


@pytest.mark.parametrize("frames,size,overlap", sorted(WINDOWS))
def test_context_windows_match_original(frames: int, size: int, overlap: int) -> None:
    expected = [list(range(first, last + 1)) for first, last in WINDOWS[frames, size, overlap]]
    assert context_windows(frames, size, overlap) == expected


def _pose_conditions(pose: torch.Tensor, windows: list[list[int]]) -> list[torch.Tensor]:
    """What the fake pose guider gives window k: the mean of the guider's input (the segment, its
    first frame 3 more times, / 255), rounded to bf16 as the original rounds pose features."""
    out = []
    for win in windows:
        seg = pose[:, :, 4 * win[0] : 4 * win[-1] + 1]
        out.append((torch.cat([seg[:, :, :1].repeat(1, 1, 3, 1, 1), seg], dim=2) / 255.0).mean().to(torch.bfloat16))
    return out


@pytest.mark.parametrize("frames,size,overlap,steps", sorted(LONG))
def test_long_video_loop_matches_original(frames: int, size: int, overlap: int, steps: int) -> None:
    golden = LONG[frames, size, overlap, steps]
    pose = (torch.arange(4 * frames - 3, dtype=torch.float32) * 3.0 % 256).view(1, 1, -1, 1, 1).expand(1, 3, -1, 16, 16)
    windows = context_windows(frames, size, overlap)
    conditions = _pose_conditions(pose, windows)
    assert [float(c) for c in conditions] == golden["conditions"]
    latents = wave((1, 16, frames, 2, 2), 0.37, 0.11)
    first = [wave((1, 16, 2, 2, 2), 0.53, float(k)) for k in range(len(windows))]
    sigmas = flow_schedule(steps)
    for i in range(steps):
        t = sigmas[i : i + 1] * 1000

        def step_window(k: int, x: torch.Tensor, t: torch.Tensor = t, i: int = i) -> torch.Tensor:
            return flow_step(x, fake_velocity(x, t, conditions[k]), sigmas, i)

        latents = long_video_step(latents, windows, first, step_window)
    lat = latents.double()
    assert lat.sum(dim=(0, 1, 3, 4)).tolist() == pytest.approx(golden["frame_sums"], rel=REL)
    index = torch.arange(lat.numel(), dtype=torch.float64).view(lat.shape)
    assert close(float((lat * torch.cos(0.01 * index)).sum()), golden["weighted"])
    for flat, value in golden["elements"].items():
        assert close(float(lat.flatten()[int(flat)]), value), flat
    # the original's private state: window 0's first two frames are its own trajectory
    assert torch.equal(latents[:, :, :2], first[0])


# ---- (c) TeaCache ---------------------------------------------------------------------------------


def test_teacache_polynomial_matches_original() -> None:
    for rel_l1, value in POLY.items():
        assert teacache_rescale(rel_l1) == pytest.approx(value, rel=1e-12, abs=1e-15), rel_l1


def test_teacache_distances_match_original() -> None:
    """With a threshold never reached the original accumulates every distance: its running sums."""
    distances = teacache_distances(t_mods(12, 16))
    _, acc = TEACACHE[100.0]
    assert len(distances) == 11
    assert list(torch.tensor(distances, dtype=torch.float64).cumsum(0)[:10]) == pytest.approx(acc[1:11], rel=REL)


@pytest.mark.parametrize("threshold", sorted(TEACACHE))
def test_teacache_plan_matches_original(threshold: float) -> None:
    compute, _ = TEACACHE[threshold]
    assert teacache_plan(t_mods(12, 16), threshold) == compute


# ---- (d) tiled decode -----------------------------------------------------------------------------


@pytest.mark.parametrize("height,width,tile,stride", sorted(TILED))
def test_tiled_decode_matches_original(height: int, width: int, tile: tuple[int, int], stride: tuple[int, int]) -> None:
    golden = TILED[height, width, tile, stride]
    z = wave((1, 16, 2, height, width), 0.7, 0.0, 1.2)
    out = tiled_decode(fake_decode, z, 8, tile, stride)
    assert tuple(out.shape) == golden["shape"]
    r = out.double()
    index = torch.arange(r.numel(), dtype=torch.float64).view(r.shape)
    assert close(float(r.sum()), golden["sum"])
    assert close(float(r.abs().sum()), golden["abs"])
    assert close(float((r * torch.cos(0.001 * index)).sum()), golden["weighted"])
    assert int((r.abs() == 1).sum()) == golden["clamped"]
    for frame, channel, y, x, value in golden["points"]:
        assert close(float(r[0, channel, frame, y, x]), value), (frame, channel, y, x)
    if height <= tile[0] and width <= tile[1]:  # one tile, mask 1: the plain clamped decode
        assert torch.equal(out, fake_decode(z).clamp(-1, 1))


def test_tiled_decode_defaults_are_the_originals() -> None:
    """The pipeline's tile (30, 52) and stride (15, 26) latents are the defaults (WV:993-994)."""
    z = wave((1, 16, 2, 40, 70), 0.7, 0.0, 1.2)
    assert torch.equal(tiled_decode(fake_decode, z, 8), tiled_decode(fake_decode, z, 8, (30, 52), (15, 26)))
