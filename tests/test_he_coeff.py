"""The coefficient packing of the `he` defense (arena/he/coeff.py, sealio.py): its modular
arithmetic is exact (checked against Python integers), the server's output decrypts to the
plaintext layer within CKKS precision for any batch and layer shape, and what crosses between the
parties is SEAL ciphertexts as bytes that the server really computes on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tenseal")

from arena.he.ckks import CKKSParams, Wire  # noqa: E402
from arena.he.coeff import CoeffClient, CoeffLayout, CoeffServer  # noqa: E402
from arena.he.sealio import U64, SealFormat, modmatmul  # noqa: E402

DEFAULT = CKKSParams(2048, (54,), 22)  # the defense's default for this packing
PARAMS = [DEFAULT, CKKSParams(4096, (60, 40), 25)]  # and one with an (unused) second prime
TOL = {22: 5e-5, 25: 5e-6}  # max |error| on these layers: about 2^-scale_bits times the activations' norm


@pytest.fixture(scope="module", params=PARAMS, ids=lambda p: f"n{p.poly_modulus_degree}")
def parties(request):
    client = CoeffClient(request.param, 256, 120)
    return client, CoeffServer(client.public_context(), request.param.scale_bits)


def test_modular_arithmetic_is_exact(parties):
    q = parties[0].q  # 54 or 60 bits
    rng = np.random.default_rng(0)
    a = rng.integers(0, q, size=(3, 5, 40), dtype=U64)
    b = rng.integers(0, q, size=(3, 40, 7), dtype=U64)
    got = modmatmul(a, b, q)
    want = [[[sum(int(a[z, i, k]) * int(b[z, k, j]) for k in range(40)) % q for j in range(7)] for i in range(5)]
            for z in range(3)]
    assert got.tolist() == want
    big = np.full((1, 256), q - 1, dtype=U64)  # the largest sums the limbs must hold exactly
    assert modmatmul(big, big.T.copy(), q).tolist() == [[256 * (q - 1) ** 2 % q]]
    with pytest.raises(ValueError, match="inner dimension"):
        modmatmul(a[..., :1].repeat(300, axis=-1), b[:, :1].repeat(300, axis=-2), q)


@pytest.mark.parametrize("rows", [1, 37, 64, 300])
def test_coefficient_packing_matches_plaintext(parties, rows):
    client, server = parties
    rng = np.random.default_rng(rows)
    a = np.maximum(rng.normal(size=(rows, 256)), 0) * 2
    w, b = rng.uniform(-0.1, 0.1, (120, 256)), rng.uniform(-0.5, 0.5, 120)
    out, cap = [], CoeffLayout.max_samples(client.n)
    for s in range(0, rows, cap):  # as the channel does: n / 16 samples at most
        up, lay = client.encrypt(a[s:s + cap])
        assert len(up) == lay.nf == 16 and lay.samples >= min(rows - s, cap)
        out.append(client.decrypt(server.evaluate(up, lay, w, b), lay, len(a[s:s + cap])))
    h = np.concatenate(out)
    assert h.shape == (rows, 120)
    assert np.abs(h - (a @ w.T + b)).max() < TOL[client.params.scale_bits]


def test_other_widths_and_no_bias():
    client = CoeffClient(DEFAULT, 70, 9)  # neither width a multiple of the blocks
    server = CoeffServer(client.public_context(), DEFAULT.scale_bits)
    rng = np.random.default_rng(1)
    a, w = rng.normal(size=(5, 70)), rng.normal(size=(9, 70)) / 4  # error grows with the weights: keep them LeNet-like
    up, lay = client.encrypt(a)
    assert (lay.nf, lay.no, lay.samples) == (5, 1, 8)  # at least n / 256 samples per ciphertext
    h = client.decrypt(server.evaluate(up, lay, w, None), lay, 5)
    assert np.abs(h - a @ w.T).max() < TOL[22]


def test_bytes_cross_as_seal_ciphertexts_and_the_server_computes_on_them(parties):
    from tenseal import sealapi

    client, server = parties
    keys = (sealapi.SecretKey, sealapi.PublicKey, sealapi.GaloisKeys, sealapi.RelinKeys)
    assert not server.holds_secret_key() and not any(isinstance(v, keys) for v in vars(server).values())
    rng = np.random.default_rng(2)
    a = rng.normal(size=(64, 256))
    w, b = rng.normal(size=(120, 256)) / 16, np.zeros(120)
    up, lay = client.encrypt(a)
    down = server.evaluate(up, lay, w, b)
    for blob in up + down:
        assert isinstance(blob, bytes) and blob[:2] == b"\x5e\xa1"  # SEAL's serialisation magic
    fmt = SealFormat(client._sc, Wire())
    x = fmt.read(up[0])
    assert x.shape == (2, client.n) and np.all(x < U64(client.q)) and len(set(x[1, :64].tolist())) == 64  # random c1
    # the result is computed from the bytes received: change one input ciphertext and it changes
    # exactly where feature block 0 enters, and is garbage there (the server cannot read it)
    tampered = fmt.write(np.roll(fmt.read(up[0]), 1, axis=1))
    h = client.decrypt(server.evaluate(up, lay, w, b), lay, 64)
    h2 = client.decrypt(server.evaluate([tampered] + up[1:], lay, w, b), lay, 64)
    assert np.abs(h - a @ w.T).max() < TOL[client.params.scale_bits] and np.abs(h2 - h).max() > 1.0
    with pytest.raises(ValueError, match="expected 16 ciphertexts"):
        server.evaluate(up[:-1], lay, w, b)


def test_training_step_on_the_coefficient_packing_uses_the_current_weights(tiny_data):
    """Through the channel: the server layer evaluated on ciphertext equals the plaintext layer
    after its weights changed (nothing of the previous step's encoding is reused)."""
    from arena.defenses import DEFENSES
    from arena.models import build_model
    from arena.protocol.train import make_setup
    from arena.records import Scenario, TrainConfig
    from arena.seeding import seed_everything, torch_generator

    seed_everything(0, "init")
    model = build_model("lenet", tiny_data.shape, tiny_data.num_classes)
    setup = make_setup(Scenario("digits", "lenet", 1, setup="u-shaped", seed=0, train=TrainConfig(epochs=1)),
                       model, tiny_data.shape)
    defense = DEFENSES.create("he")
    sm = defense.apply(setup, torch_generator(0, "he")).split()
    a = sm.client(tiny_data.x_test[:64]).detach()
    for _ in range(2):
        h = defense.channel.encrypted_forward(a.flatten(1).double().numpy(), sm.server)
        assert np.abs(h - sm.server(a).detach().double().numpy()).max() < TOL[22]
        with torch.no_grad():
            sm.server[0].linear.weight.mul_(-0.5)
    rep = defense.report()
    assert rep["he_packing"] == "coeff" and rep["he_ciphertexts_up_per_batch"] == 16
    assert rep["he_ciphertexts_down_per_batch"] == 60  # 120 outputs, 2 per product at 64 samples, n = 2048
