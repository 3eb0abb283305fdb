"""Network torsos and heads (flax.linen), shared by all algorithms.

linen + ``jax.jit`` measured fastest for the small networks RL uses (see STACK-NOTES). Weights
use orthogonal initialisation with the usual gains: sqrt(2) for hidden layers, 0.01 for policy
logits/means (a near-uniform initial policy) and 1.0 for values; :func:`init` builds a
network's params with all those random matrices drawn in one call, ensembles included.

Top to bottom: init machinery (:class:`Orthogonal`, :func:`orthogonal`, :func:`dense`,
:func:`init`, :func:`ensemble`, :class:`NoisyDense`), the torso (:class:`MLP`, with
:func:`obs_features`: convolutions for image observations, the config's ``conv``), then heads:
on-policy :class:`ActorCritic` and its recurrent variant :class:`RecurrentActorCritic` (GRU or
LSTM core, :func:`unroll` over sequences), DQN's
:class:`QNetwork` (scalar or distributional, via :func:`action_head`) and IQN's
:class:`ImplicitQuantileNetwork` (:class:`CosineEmbedding`, :func:`distort`), and the off-policy actor-critic family's critics (:class:`QCritic`,
:class:`QCriticEnsemble`, :class:`DiscreteCriticEnsemble`) and actors
(:class:`DeterministicActor`, :class:`TanhGaussianActor` with :class:`TanhGaussian`,
:class:`CategoricalActor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxrl.config import ACTIVATIONS
from jaxrl.core import fresh_carry

ACTIVATION_FNS = {name: getattr(nn, name) for name in ACTIVATIONS}


class Orthogonal(struct.PyTreeNode, nn.meta.AxisMetadata):
    """A weight (boxed by :func:`dense`) to be ``gain`` times a random orthogonal matrix.

    ``value`` already holds such a matrix, drawn by this layer alone, so ``module.init`` works
    as usual (flax unboxes it on use); :func:`init` replaces it with one from a shared draw.
    ``member_axes`` are the axes that lifting (``nn.vmap``/``nn.scan``, e.g. :func:`ensemble`)
    added to the layer's own kernel axes: ``value`` then holds one matrix per member, each drawn
    independently.
    """

    value: jax.Array
    gain: float = struct.field(pytree_node=False)
    member_axes: tuple[int, ...] = struct.field(pytree_node=False, default=())

    def unbox(self) -> jax.Array:
        return self.value

    def replace_boxed(self, value: jax.Array) -> Orthogonal:
        return self.replace(value=value)

    def add_axis(self, index: int, params: dict) -> Orthogonal:
        """Records a member axis that lifting inserted at ``index`` (``value`` already has it)."""
        index %= self.value.ndim
        shifted = tuple(a + (a >= index) for a in self.member_axes)
        return self.replace(member_axes=tuple(sorted((*shifted, index))))

    def remove_axis(self, index: int, params: dict) -> Orthogonal:
        """Forgets the member axis at ``index`` (lifting is about to map over it)."""
        index %= self.value.ndim
        if index not in self.member_axes:
            raise ValueError(f"axis {index} of a {self.value.shape} kernel is not a member axis")
        return self.replace(member_axes=tuple(a - (a > index) for a in self.member_axes if a != index))

    def matrices(self) -> tuple[int, int, int]:
        """(members, inputs, outputs): ``value`` as member kernels seen as matrices the way flax's
        orthogonal sees them (all kernel axes but the last, the last)."""
        shape = self.value.shape
        kernel = [d for a, d in enumerate(shape) if a not in self.member_axes]
        return math.prod(shape[a] for a in self.member_axes), math.prod(kernel[:-1]), kernel[-1]

    def from_matrices(self, matrices: jax.Array) -> jax.Array:
        """The inverse of :meth:`matrices`: (members, inputs, outputs) arrays to ``value``'s layout."""
        shape, axes = self.value.shape, self.member_axes
        lifted = [shape[a] for a in axes] + [d for a, d in enumerate(shape) if a not in axes]
        stacked = matrices.reshape(lifted)  # member axes first
        return jnp.moveaxis(stacked, tuple(range(len(axes))), axes).astype(self.value.dtype)


def orthogonal(gain: float) -> nn.initializers.Initializer:
    """flax's ``orthogonal(gain)`` kernel initializer, its result boxed as :class:`Orthogonal`
    so that :func:`init` draws it together with all other kernels."""
    draw = nn.initializers.orthogonal(gain)

    def kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> Orthogonal:
        return Orthogonal(draw(key, shape, dtype), gain)

    return kernel_init


def dense(features: int, gain: float = float(np.sqrt(2)), name: str | None = None) -> nn.Dense:
    """A dense layer with an orthogonal ``gain``-scaled kernel and zero bias."""
    return nn.Dense(features, kernel_init=orthogonal(gain), bias_init=nn.initializers.zeros, name=name)


class NoisyDense(nn.Module):
    """A dense layer with factorised Gaussian noise on its weights (Fortunato et al., 2018, "Noisy
    Networks for Exploration", section 3.(b)): ``y = x (mu_w + sigma_w * eps_w) + mu_b + sigma_b * eps_b``
    with ``eps_w = f(eps_in) f(eps_out)^T``, ``eps_b = f(eps_out)``, ``f(e) = sgn(e) sqrt(|e|)`` and
    ``eps_in (inputs,)``, ``eps_out (features,)`` standard normal, so a draw costs ``inputs +
    features`` normals, not their product.

    The noise is drawn afresh at every call from the ``noise`` rng stream
    (``apply(..., rngs={"noise": key})``), one draw for the whole batch; called without a
    ``noise`` rng (as ``init`` does) the layer uses its mean weights ``mu``, the deterministic
    network. Init as in the paper's factorised case: ``mu ~ U[-1/sqrt(p), 1/sqrt(p)]`` and
    ``sigma = sigma0 / sqrt(p)`` for ``p`` inputs.
    """

    features: int
    sigma0: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inputs = x.shape[-1]
        bound = 1.0 / math.sqrt(inputs)
        uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
        sigma = nn.initializers.constant(self.sigma0 / math.sqrt(inputs))
        mu_w = self.param("kernel", uniform, (inputs, self.features))
        mu_b = self.param("bias", uniform, (self.features,))
        sigma_w = self.param("sigma_kernel", sigma, (inputs, self.features))
        sigma_b = self.param("sigma_bias", sigma, (self.features,))
        y = x @ mu_w + mu_b
        if not self.has_rng("noise"):
            return y
        k_in, k_out = jax.random.split(self.make_rng("noise"))
        scaled = lambda e: jnp.sign(e) * jnp.sqrt(jnp.abs(e))  # noqa: E731  (f)
        f_in = scaled(jax.random.normal(k_in, (inputs,), x.dtype))
        f_out = scaled(jax.random.normal(k_out, (self.features,), x.dtype))
        # x (sigma_w * f_in f_out^T) = ((x * f_in) sigma_w) * f_out: no (inputs, features) noise matrix
        return y + ((x * f_in) @ sigma_w) * f_out + sigma_b * f_out


def linear(features: int, gain: float, noisy: bool = False, sigma0: float = 0.5) -> nn.Module:
    """A :func:`dense` layer (orthogonal, ``gain``), or with ``noisy`` a :class:`NoisyDense`
    (``sigma0``; its own init, as the paper's)."""
    return NoisyDense(features, sigma0) if noisy else dense(features, gain)


def init(module: nn.Module, key: jax.Array, *inputs: jax.Array) -> dict:
    """``module.init(key, *inputs)``, unboxed, with every :func:`dense` kernel drawn at once.

    Flax draws each layer's weights with a random call of its own, and XLA compiles each call
    into kernels of its own: on a 2-core CPU that was 16% of a PPO program's compile time. Here
    one normal draw covers all kernels, and matrices with as many rows are orthogonalised by one
    batched QR (the per-layer draws go unused and are dropped when tracing). Same distribution
    as flax's ``orthogonal(gain)``: Q of the QR of a Gaussian matrix, signs fixed by R's diagonal.
    A lifted kernel (an :func:`ensemble`'s, shape (members, in, out)) is ``members`` matrices,
    each drawn independently, in the same draw and QR: the compiled program does not grow
    with the number of members.
    """
    k_init, k_noise = jax.random.split(key)
    is_box = lambda x: isinstance(x, Orthogonal)  # noqa: E731
    leaves, tree = jax.tree.flatten(module.init(k_init, *inputs), is_leaf=is_box)
    # A kernel is a (rows >= cols) matrix, transposed when wide. Kernels with the same rows
    # share one batched QR at the group's widest cols: the first cols columns of Q from the QR
    # of a Gaussian matrix are Q from the QR of its first cols columns.
    groups: dict[int, list[tuple[int, int, int, int]]] = {}  # rows -> (leaf index, members, n_in, n_out)
    for i, leaf in enumerate(leaves):
        if is_box(leaf):
            members, n_in, n_out = leaf.matrices()
            groups.setdefault(max(n_in, n_out), []).append((i, members, n_in, n_out))
    widths = {m: max(min(n_in, n_out) for _, _, n_in, n_out in kernels) for m, kernels in groups.items()}
    sizes = [sum(k[1] for k in kernels) * m * widths[m] for m, kernels in groups.items()]
    noise = jnp.split(jax.random.normal(k_noise, (sum(sizes),)), np.cumsum(sizes)[:-1]) if groups else []
    for (m, kernels), flat in zip(groups.items(), noise):
        q, r = jnp.linalg.qr(flat.reshape(-1, m, widths[m]))
        q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
        start = 0
        for i, members, n_in, n_out in kernels:
            box = leaves[i]
            matrices = q[start:start + members, :, :min(n_in, n_out)]
            matrices = jnp.swapaxes(matrices, 1, 2) if n_in < n_out else matrices
            leaves[i] = box.from_matrices(box.gain * matrices)
            start += members
    return jax.tree.unflatten(tree, leaves)


def ensemble(module: type[nn.Module], size: int) -> type[nn.Module]:
    """``module`` lifted to ``size`` independently initialised members in one vectorised module.

    Every param gains a leading axis of ``size``; a call runs all members on the same inputs as
    one batched computation and stacks their outputs on a new leading axis. Construct the result
    with ``module``'s own arguments.
    """
    _check_positive("the number of ensemble members", size)
    return nn.vmap(module, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=None, out_axes=0, axis_size=size)


def _check_positive(name: str, value: int | None, optional: bool = False) -> None:
    """A clear error, before any tracing, for a count that is not a positive integer."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def flatten_obs(obs: jax.Array, obs_shape: tuple[int, ...]) -> jax.Array:
    """``obs`` with its trailing per-observation axes (``obs_shape``) flattened to one axis."""
    return obs.reshape(obs.shape[: obs.ndim - len(obs_shape)] + (-1,))


Convs = Sequence[Sequence[int]]  # convolutions as (features, kernel, stride)


def conv_output_shape(obs_shape: tuple[int, ...], conv: Convs) -> tuple[int, int, int]:
    """The (height, width, features) that the ``conv`` layers make of images of ``obs_shape``,
    or a ValueError when the observations are not images or a kernel outgrows what is left."""
    if len(obs_shape) != 3:
        raise ValueError(f"conv layers need image observations (height, width, channels), got observation "
                         f"shape {obs_shape}")
    (height, width, channels), sizes = obs_shape, []
    for features, kernel, stride in conv:
        if kernel > min(height, width):
            raise ValueError(f"conv kernel {kernel} is larger than the {height}x{width} image it gets (after "
                             f"convolutions {sizes}): 'VALID' convolutions need kernel <= height and width")
        height, width, channels = (height - kernel) // stride + 1, (width - kernel) // stride + 1, features
        sizes.append((height, width, channels))
    return height, width, channels


def convolve(x: jax.Array, kernel: jax.Array, stride: int, by_matmul: bool | None = None) -> jax.Array:
    """The 'VALID' convolution of images ``x (..., H, W, C)`` (any leading batch axes) with a
    square ``kernel (k, k, C, F)``: (..., H', W', F).

    ``by_matmul`` (default: on CPU) computes it as one matmul over the k*k strided views of the
    image (im2col by slicing), the same sums as ``lax.conv``: differentiating XLA's CPU
    convolution inside a ``scan`` (every minibatch loop) measured 9x slower (STACK-NOTES).
    """
    k, (h, w, c) = kernel.shape[0], x.shape[-3:]
    out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
    if jax.default_backend() == "cpu" if by_matmul is None else by_matmul:
        views = [x[..., i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride, :]
                 for i in range(k) for j in range(k)]  # (kh, kw, C) order, as the kernel's rows
        return jnp.concatenate(views, axis=-1) @ kernel.reshape(k * k * c, -1)
    y = jax.lax.conv_general_dilated(x.reshape(-1, h, w, c), kernel, (stride, stride), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(x.shape[:-3] + y.shape[-3:])


class Conv(nn.Module):
    """A :func:`convolve` layer with an orthogonal sqrt(2)-gain (k, k, C, features) kernel (in
    :func:`init`'s shared draw) and a zero bias."""

    features: int
    kernel: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel, self.kernel, x.shape[-1], self.features)
        kernel = self.param("kernel", orthogonal(float(np.sqrt(2))), shape)
        return convolve(x, kernel, self.stride) + self.param("bias", nn.initializers.zeros, (self.features,))


def obs_features(obs: jax.Array, obs_shape: tuple[int, ...], conv: Convs = (), activation: str = "relu",
                 layer_norm: bool = False) -> jax.Array:
    """The observation features the dense layers see: ``obs (..., *obs_shape)`` flattened to
    ``(..., features)``, after the ``conv`` layers when given (call inside a compact module).

    With ``conv``, ``obs_shape`` is an image (H, W, C) (channels last, as MinAtar's and gymnax's
    pixel envs give them); each convolution (features, kernel, stride) is a :class:`Conv`
    ('VALID', as the MinAtar paper's network and PQN's), then a LayerNorm over its features when
    ``layer_norm``, then ``activation``.
    """
    if conv:
        conv_output_shape(obs_shape, conv)  # a clear error for images the kernels do not fit
        for features, kernel, stride in conv:
            obs = Conv(features, kernel, stride)(obs)
            if layer_norm:
                obs = nn.LayerNorm()(obs)
            obs = ACTIVATION_FNS[activation](obs)
        obs_shape = obs.shape[-3:]
    return flatten_obs(obs, obs_shape)


# ---------------------------------------------------------------------------------------------
# Torsos


class MLP(nn.Module):
    """The torso: observation features (:func:`obs_features`: flattened, after ``conv`` layers
    for images), then ``hidden`` dense layers.

    ``layer_norm`` puts a LayerNorm after each dense layer (and convolution), before its
    activation (off by default, so existing networks' params are unchanged); ``noisy`` makes the
    dense layers :class:`NoisyDense` (``sigma0``; the convolutions stay deterministic).
    """

    hidden: Sequence[int]
    activation: str = "tanh"
    obs_shape: tuple[int, ...] = ()  # the per-observation shape, flattened to one axis
    layer_norm: bool = False
    conv: Convs = ()
    noisy: bool = False
    sigma0: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = obs_features(x, self.obs_shape, self.conv, self.activation, self.layer_norm)
        for width in self.hidden:
            x = linear(width, float(np.sqrt(2)), self.noisy, self.sigma0)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = ACTIVATION_FNS[self.activation](x)
        return x


# ---------------------------------------------------------------------------------------------
# On-policy actor-critic (PPO) and discrete action values (DQN)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs; ``__call__`` returns (policy distribution, value).

    ``action_dim`` is the number of actions (discrete, categorical policy) or the action size
    (continuous, diagonal Gaussian with a state-independent log standard deviation). ``value``
    alone is a method so bootstrap values cost only the critic.
    """

    action_dim: int
    discrete: bool
    hidden: Sequence[int]
    activation: str = "tanh"
    obs_shape: tuple[int, ...] = ()
    conv: Convs = ()

    def setup(self) -> None:
        self.actor = MLP(self.hidden, self.activation, self.obs_shape, conv=self.conv)
        self.actor_out = dense(self.action_dim, 0.01)
        self.critic = MLP(self.hidden, self.activation, self.obs_shape, conv=self.conv)
        self.critic_out = dense(1, 1.0)
        if not self.discrete:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

    def __call__(self, obs: jax.Array) -> tuple[distrax.Distribution, jax.Array]:
        return self.policy(obs), self.value(obs)

    def policy(self, obs: jax.Array) -> distrax.Distribution:
        out = self.actor_out(self.actor(obs))
        if self.discrete:
            return distrax.Categorical(logits=out)
        return distrax.MultivariateNormalDiag(out, jnp.exp(self.log_std))

    def value(self, obs: jax.Array) -> jax.Array:
        return self.critic_out(self.critic(obs))[..., 0]


RNN_CELLS = ("gru", "lstm")  # the recurrent cells of RecurrentActorCritic


class RecurrentActorCritic(nn.Module):
    """An actor-critic with memory: a dense embedding (an MLP of ``hidden``), a recurrent cell
    (``cell``: flax's GRU or LSTM, ``rnn_size`` units) shared by actor and critic, then
    separate actor and critic MLPs (``hidden``) with :class:`ActorCritic`'s heads.

    The cell's carry is the agent's memory of one env: zeros where an episode starts
    (:meth:`initial_carry`); a GRU's is an ``(rnn_size,)`` array, an LSTM's a ``(c, h)`` pair.
    One step (``__call__``; :meth:`policy_step` without the critic, for acting) takes a batch
    ``carry (N, ...)`` and ``obs (N, *obs_shape)`` and returns ``(carry, policy, value)``; :func:`unroll` replays whole
    sequences ``(T, N, ...)`` with the carry reset where an episode starts (for learning).
    The methods :meth:`embed`, :meth:`step`, :meth:`policy` and :meth:`value` are the pieces,
    so a sequence embeds all its observations in one batch and scans only the cell.
    """

    action_dim: int
    discrete: bool
    hidden: Sequence[int]
    activation: str = "tanh"
    obs_shape: tuple[int, ...] = ()
    cell: str = "gru"
    rnn_size: int = 128
    conv: Convs = ()  # the embedding's convolutions (image observations)

    def __post_init__(self) -> None:
        if self.cell not in RNN_CELLS:
            raise ValueError(f"cell must be one of {', '.join(RNN_CELLS)}, got {self.cell!r}")
        _check_positive("rnn_size", self.rnn_size)
        super().__post_init__()

    def setup(self) -> None:
        self.embedding = MLP(self.hidden, self.activation, self.obs_shape, conv=self.conv)
        self.core = (nn.GRUCell if self.cell == "gru" else nn.OptimizedLSTMCell)(self.rnn_size)
        self.actor = MLP(self.hidden, self.activation, (self.rnn_size,))
        self.actor_out = dense(self.action_dim, 0.01)
        self.critic = MLP(self.hidden, self.activation, (self.rnn_size,))
        self.critic_out = dense(1, 1.0)
        if not self.discrete:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

    def initial_carry(self) -> jax.Array | tuple[jax.Array, jax.Array]:
        """The carry of one env at an episode's start: zeros (the module needs no params for it)."""
        zeros = jnp.zeros((self.rnn_size,), jnp.float32)
        return zeros if self.cell == "gru" else (zeros, zeros)

    def __call__(self, carry, obs: jax.Array):
        """One step of a batch of envs: ``(carry, policy, value)``."""
        carry, features = self.step(carry, self.embed(obs))
        return carry, self.policy(features), self.value(features)

    def policy_step(self, carry, obs: jax.Array):
        """One step of acting, the actor alone: ``(carry, policy)``."""
        carry, features = self.step(carry, self.embed(obs))
        return carry, self.policy(features)

    def embed(self, obs: jax.Array) -> jax.Array:
        """The cell's inputs for observations with any leading axes."""
        return self.embedding(obs)

    def step(self, carry, inputs: jax.Array):
        """One cell step: ``(new carry, features (..., rnn_size))`` (any leading axes)."""
        return self.core(carry, inputs)

    def policy(self, features: jax.Array) -> distrax.Distribution:
        out = self.actor_out(self.actor(features))
        if self.discrete:
            return distrax.Categorical(logits=out)
        return distrax.MultivariateNormalDiag(out, jnp.exp(self.log_std))

    def value(self, features: jax.Array) -> jax.Array:
        return self.critic_out(self.critic(features))[..., 0]


def unroll(network: RecurrentActorCritic, params: dict, carry, obs: jax.Array, first: jax.Array):
    """Replays sequences through ``network``'s cell: from ``carry (N, ...)`` over time-major
    ``obs (T, N, *obs_shape)``, the carry set back to :meth:`RecurrentActorCritic.initial_carry`
    wherever ``first (T, N)`` marks an episode's start. Returns ``(carries, features)``: the
    carry after each step (``(T, N, ...)`` leaves) and the features ``(T, N, rnn_size)`` the
    heads take (``network.apply(params, features, method="policy")``, ``"value"``).
    """
    inputs = network.apply(params, obs, method=RecurrentActorCritic.embed)  # all steps in one batch
    initial = network.initial_carry()

    def step(carry, step_inputs):
        x, first_t = step_inputs
        carry, features = network.apply(params, fresh_carry(first_t, initial, carry), x,
                                        method=RecurrentActorCritic.step)
        return carry, (carry, features)

    _, (carries, features) = jax.lax.scan(step, carry, (inputs, first))
    return carries, features


class _ActionValues(nn.Module):
    """Fields shared by the networks of action values (:class:`QNetwork`,
    :class:`ImplicitQuantileNetwork`). ``noisy``: every dense layer of the torso and the head is
    a :class:`NoisyDense` (``sigma0``): noisy with a ``noise`` rng, the mean network without."""

    num_actions: int
    hidden: Sequence[int]
    activation: str = "relu"
    dueling: bool = False
    obs_shape: tuple[int, ...] = ()
    layer_norm: bool = False
    conv: Convs = ()
    noisy: bool = False
    sigma0: float = 0.5

    def torso(self, hidden: Sequence[int], obs_shape: tuple[int, ...], conv: Convs = ()) -> MLP:
        return MLP(hidden, self.activation, obs_shape, self.layer_norm, conv, self.noisy, self.sigma0)

    def head(self, x: jax.Array, num_atoms: int | None = None) -> jax.Array:
        return action_head(x, self.num_actions, self.dueling, num_atoms, self.noisy, self.sigma0)


class QNetwork(_ActionValues):
    """Action values Q(s, ·) for discrete actions, shape (..., num_actions); ``dueling`` splits
    them into V + (A - mean A).

    With ``num_atoms`` set, a distributional head: (..., num_actions, num_atoms) outputs per
    action (C51's logits over a fixed support, or QR-DQN's quantiles); dueling then applies atom
    by atom, as in Rainbow.
    """

    num_atoms: int | None = None

    def __post_init__(self) -> None:
        _check_positive("num_atoms", self.num_atoms, optional=True)
        super().__post_init__()

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return self.head(self.torso(self.hidden, self.obs_shape, self.conv)(obs), self.num_atoms)


def action_head(x: jax.Array, num_actions: int, dueling: bool, num_atoms: int | None = None, noisy: bool = False,
                sigma0: float = 0.5) -> jax.Array:
    """Dense outputs per action from features ``x (..., features)`` (call inside a compact
    module): (..., num_actions), or (..., num_actions, num_atoms) with ``num_atoms``; ``dueling``
    computes them as V + (A - mean over actions of A); ``noisy``: :class:`NoisyDense` layers."""
    atoms = num_atoms or 1
    shape = x.shape[:-1] + ((num_actions, atoms) if num_atoms else (num_actions,))
    if not dueling:
        return linear(num_actions * atoms, 1.0, noisy, sigma0)(x).reshape(shape)
    advantage = linear(num_actions * atoms, 1.0, noisy, sigma0)(x).reshape(x.shape[:-1] + (num_actions, atoms))
    value = linear(atoms, 1.0, noisy, sigma0)(x)[..., None, :]
    return (value + advantage - advantage.mean(axis=-2, keepdims=True)).reshape(shape)


class CosineEmbedding(nn.Module):
    """IQN's embedding of quantile fractions (Dabney et al., 2018, "Implicit Quantile Networks for
    Distributional Reinforcement Learning", eq. 4): ``taus (...)`` -> ``(..., features)`` with
    ``phi_j(tau) = ReLU(sum_{i<n} cos(pi i tau) w_ij + b_j)``, ``n = num_cosines``."""

    num_cosines: int
    features: int

    @nn.compact
    def __call__(self, taus: jax.Array) -> jax.Array:
        cosines = jnp.cos(jnp.pi * jnp.arange(self.num_cosines, dtype=taus.dtype) * taus[..., None])
        return nn.relu(dense(self.features)(cosines))


class ImplicitQuantileNetwork(_ActionValues):
    """IQN's quantile function Z_tau(s, a): ``(obs (..., *obs_shape), taus (..., K))`` ->
    ``(..., num_actions, K)``, the ``taus`` quantiles of every action's return.

    The hidden layers but the last give state features; they are multiplied elementwise by the
    :class:`CosineEmbedding` of each tau, then go through the last hidden layer and the
    (optionally dueling) action head. With one hidden layer the flattened observation is the
    state feature.
    """

    num_cosines: int = 64

    def __post_init__(self) -> None:
        _check_positive("num_cosines", self.num_cosines)
        super().__post_init__()

    @nn.compact
    def __call__(self, obs: jax.Array, taus: jax.Array) -> jax.Array:
        *torso, last = self.hidden
        x = (self.torso(torso, self.obs_shape, self.conv)(obs) if torso
             else obs_features(obs, self.obs_shape, self.conv, self.activation, self.layer_norm))
        x = x[..., None, :] * CosineEmbedding(self.num_cosines, x.shape[-1])(taus)  # (..., K, features)
        x = self.torso((last,), (x.shape[-1],))(x)
        return jnp.swapaxes(self.head(x), -1, -2)


RISKS = ("neutral", "cvar", "wang")  # distortions of IQN's sampled quantile fractions


def distort(taus: jax.Array, risk: str, eta: jax.Array | float) -> jax.Array:
    """Quantile fractions ``taus`` in [0, 1] distorted for a risk-sensitive policy (IQN, Dabney et
    al., 2018, section 3.1): the mean of the quantiles at ``distort(tau)``, tau ~ U[0, 1], is the
    distorted expectation the policy maximises. ``neutral``: unchanged (the expected return);
    ``cvar``: ``eta * tau``, the mean of the worst ``eta`` fraction of returns (CVaR(eta), 0 < eta
    <= 1); ``wang``: ``Phi(Phi^-1(tau) + eta)``, Wang (2000)'s distortion (eta < 0 risk-averse,
    > 0 risk-seeking)."""
    if risk == "neutral":
        return taus
    if risk == "cvar":
        return eta * taus
    if risk == "wang":
        return jax.scipy.stats.norm.cdf(jax.scipy.stats.norm.ppf(taus) + eta)
    raise ValueError(f"risk must be one of {', '.join(RISKS)}, got {risk!r}")


# ---------------------------------------------------------------------------------------------
# Off-policy actor-critic (DDPG, TD3, SAC, TQC): critics


class QCritic(nn.Module):
    """Q(s, a): the flattened observation and the action, concatenated, through an MLP.

    Returns shape (...,) — one value per (observation, action) — or, with ``num_quantiles``
    set (TQC), (..., num_quantiles) return quantiles. ``obs`` is (..., *obs_shape) and
    ``action`` (..., action_dim) with the same leading axes.
    """

    hidden: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    num_quantiles: int | None = None
    obs_shape: tuple[int, ...] = ()
    conv: Convs = ()  # applied to the observation, before the action joins it

    def __post_init__(self) -> None:
        _check_positive("num_quantiles", self.num_quantiles, optional=True)
        super().__post_init__()

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        obs = obs_features(obs, self.obs_shape, self.conv, self.activation, self.layer_norm)
        if obs.shape[:-1] != action.shape[:-1]:
            raise ValueError(f"observations (batch axes {obs.shape[:-1]} with obs_shape {self.obs_shape}) "
                             f"and actions (batch axes {action.shape[:-1]}) must have the same batch axes")
        x = jnp.concatenate([obs, action], axis=-1)
        x = MLP(self.hidden, self.activation, (x.shape[-1],), self.layer_norm)(x)
        if self.num_quantiles is None:
            return dense(1, 1.0)(x)[..., 0]
        return dense(self.num_quantiles, 1.0)(x)


class QCriticEnsemble(nn.Module):
    """``num_critics`` independent :class:`QCritic` s as one vectorised module.

    ``(obs, action)`` -> (num_critics, ...) values, or (num_critics, ..., num_quantiles).
    Params live under ``critics`` with a leading axis of ``num_critics``.
    """

    hidden: Sequence[int]
    num_critics: int = 2
    activation: str = "relu"
    layer_norm: bool = False
    num_quantiles: int | None = None
    obs_shape: tuple[int, ...] = ()
    conv: Convs = ()

    def __post_init__(self) -> None:
        _check_positive("num_critics", self.num_critics)
        _check_positive("num_quantiles", self.num_quantiles, optional=True)
        super().__post_init__()

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        critics = ensemble(QCritic, self.num_critics)(
            self.hidden, self.activation, self.layer_norm, self.num_quantiles, self.obs_shape, self.conv,
            name="critics")
        return critics(obs, action)


class DiscreteCriticEnsemble(nn.Module):
    """``num_critics`` independent :class:`QNetwork` s (no dueling) as one vectorised module, for
    discrete SAC: ``obs`` -> (num_critics, ..., num_actions). Params live under ``critics``."""

    num_actions: int
    hidden: Sequence[int]
    num_critics: int = 2
    activation: str = "relu"
    layer_norm: bool = False
    obs_shape: tuple[int, ...] = ()
    conv: Convs = ()

    def __post_init__(self) -> None:
        _check_positive("num_critics", self.num_critics)
        _check_positive("num_actions", self.num_actions)
        super().__post_init__()

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        critics = ensemble(QNetwork, self.num_critics)(
            self.num_actions, self.hidden, self.activation, False, self.obs_shape, self.layer_norm, self.conv,
            name="critics")
        return critics(obs)


# ---------------------------------------------------------------------------------------------
# Off-policy actor-critic: actors


def action_bounds(low: Sequence[float] | np.ndarray, high: Sequence[float] | np.ndarray
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Checked per-dimension action bounds as tuples of floats (hashable module attributes).

    ``low`` and ``high`` must broadcast to one axis of action_dim entries, be finite (a squashed
    policy cannot cover an infinite interval) and have low < high.
    """
    try:
        lo, hi = np.broadcast_arrays(np.asarray(low, np.float64), np.asarray(high, np.float64))
    except ValueError as e:
        raise ValueError(f"action bounds low={low!r} and high={high!r} do not broadcast: {e}") from None
    if lo.ndim != 1 or lo.size == 0:
        raise ValueError(f"action bounds must be one value per action dimension (a 1-d sequence), "
                         f"got low={low!r}, high={high!r}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"action bounds must be finite to squash actions into them, got low={low!r}, "
                         f"high={high!r}; clip the environment's action space to a finite box first")
    if not np.all(lo < hi):
        raise ValueError(f"action bounds need low < high in every dimension, got low={low!r}, high={high!r}")
    return tuple(map(float, lo)), tuple(map(float, hi))


class _BoundedActor(nn.Module):
    """Shared fields of the continuous actors: action bounds (checked and made tuples of floats
    at construction) and the torso's settings."""

    action_low: Sequence[float]
    action_high: Sequence[float]
    hidden: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    obs_shape: tuple[int, ...] = ()
    conv: Convs = ()

    def __post_init__(self) -> None:
        low, high = action_bounds(self.action_low, self.action_high)
        object.__setattr__(self, "action_low", low)  # linen modules are frozen dataclasses
        object.__setattr__(self, "action_high", high)
        super().__post_init__()

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    def torso(self, obs: jax.Array) -> jax.Array:
        return MLP(self.hidden, self.activation, self.obs_shape, self.layer_norm, self.conv)(obs)


def _center_and_half_width(low: Sequence[float], high: Sequence[float]) -> tuple[jax.Array, jax.Array]:
    low, high = np.asarray(low), np.asarray(high)
    return jnp.asarray((low + high) / 2, jnp.float32), jnp.asarray((high - low) / 2, jnp.float32)


class DeterministicActor(_BoundedActor):
    """DDPG/TD3 policy: MLP -> dense(action_dim, gain 0.01) -> tanh, rescaled to [low, high].

    ``obs`` (..., *obs_shape) -> actions (..., action_dim), always within the bounds.
    """

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        center, half = _center_and_half_width(self.action_low, self.action_high)
        squashed = jnp.tanh(dense(self.action_dim, 0.01)(self.torso(obs)))
        return jnp.clip(center + half * squashed, jnp.asarray(self.action_low), jnp.asarray(self.action_high))


class TanhGaussian(distrax.Distribution):
    """a = center + half_width * tanh(u), u ~ N(loc, exp(log_std)) per dimension (SAC's policy).

    Event shape (action_dim,). ``sample_and_log_prob`` computes log p(a) from the pre-squash u:
    log N(u) - sum(log half_width + log(1 - tanh(u)^2)), with the stable
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), so it stays finite even where float32
    tanh(u) rounds to ±1: use that value, not ``log_prob`` of the sampled action. ``mode()`` is
    the squashed mean, the usual deterministic evaluation action (not exactly the squashed
    density's mode). No ``entropy``: SAC estimates it with -log p of samples.
    """

    # log_prob(action) maps actions to within this of ±1 (in tanh units) before atanh
    LOG_PROB_CLIP = 1e-6

    def __init__(self, loc: jax.Array, log_std: jax.Array, low: Sequence[float], high: Sequence[float]):
        """``loc`` and ``log_std``: (..., action_dim) arrays; ``low``/``high``: concrete (not
        traced) per-dimension bounds, e.g. :func:`action_bounds`' tuples."""
        self.loc = loc
        self.log_std = log_std
        self.low, self.high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
        self.center, self.half_width = _center_and_half_width(low, high)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.loc.shape[-1:]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.loc.shape[:-1]

    def squash(self, u: jax.Array) -> jax.Array:
        """The action for pre-squash values ``u``: center + half_width * tanh(u), kept within bounds."""
        return jnp.clip(self.center + self.half_width * jnp.tanh(u), self.low, self.high)

    def log_prob_pre_squash(self, u: jax.Array) -> jax.Array:
        """log p(squash(u)) from the pre-squash ``u`` (..., action_dim): stable for any finite u."""
        z = (u - self.loc) * jnp.exp(-self.log_std)
        gaussian = -0.5 * z**2 - self.log_std - 0.5 * np.log(2 * np.pi)
        log_det = jnp.log(self.half_width) + 2 * (np.log(2) - u - jax.nn.softplus(-2 * u))
        return jnp.sum(gaussian - log_det, axis=-1)

    def _sample_n_and_log_prob(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        u = self.loc + jnp.exp(self.log_std) * jax.random.normal(key, (n, *self.loc.shape), self.loc.dtype)
        return self.squash(u), self.log_prob_pre_squash(u)

    def _sample_n(self, key: jax.Array, n: int) -> jax.Array:
        return self._sample_n_and_log_prob(key, n)[0]

    def log_prob(self, value: jax.Array) -> jax.Array:
        """log p(value) for given actions. Actions closer than ``LOG_PROB_CLIP`` (in tanh units)
        to a bound are moved to that distance first, so the result is finite everywhere but only
        approximate there; exact (to float32) elsewhere."""
        y = jnp.clip((value - self.center) / self.half_width, -1 + self.LOG_PROB_CLIP, 1 - self.LOG_PROB_CLIP)
        return self.log_prob_pre_squash(jnp.arctanh(y))

    def mode(self) -> jax.Array:
        return self.squash(self.loc)


class TanhGaussianActor(_BoundedActor):
    """SAC/TQC policy: MLP -> mean and state-dependent log-std heads (dense, gain 0.01) ->
    :class:`TanhGaussian` on [low, high].

    The log-std is hard-clipped to [log_std_min, log_std_max] = [-5, 2] by default (std in
    [0.0067, 7.4]): the floor keeps float32 log-densities moderate (-log std adds at most 5 nats
    per dimension, where -20 would allow 20 and stds of 2e-9, far below float32's resolution of
    a mean near 1); above std ~7 tanh saturates most samples anyway. ``obs`` (..., *obs_shape) -> a distribution
    with batch shape (...,) and event shape (action_dim,).
    """

    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def __post_init__(self) -> None:
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"need log_std_min < log_std_max, got {self.log_std_min} and {self.log_std_max}")
        super().__post_init__()

    @nn.compact
    def __call__(self, obs: jax.Array) -> TanhGaussian:
        x = self.torso(obs)
        mean = dense(self.action_dim, 0.01, name="mean")(x)
        log_std = jnp.clip(dense(self.action_dim, 0.01, name="log_std")(x), self.log_std_min, self.log_std_max)
        return TanhGaussian(mean, log_std, self.action_low, self.action_high)


class CategoricalActor(nn.Module):
    """Discrete SAC policy: MLP -> dense(num_actions, gain 0.01) logits -> ``distrax.Categorical``
    with batch shape (...,) (``.probs`` and ``.logits``, normalised, give every action's)."""

    num_actions: int
    hidden: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    obs_shape: tuple[int, ...] = ()
    conv: Convs = ()

    def __post_init__(self) -> None:
        _check_positive("num_actions", self.num_actions)
        super().__post_init__()

    @nn.compact
    def __call__(self, obs: jax.Array) -> distrax.Categorical:
        x = MLP(self.hidden, self.activation, self.obs_shape, self.layer_norm, self.conv)(obs)
        return distrax.Categorical(logits=dense(self.num_actions, 0.01)(x))
