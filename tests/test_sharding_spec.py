import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from autopar.cost_models.links import AxisLink  # noqa: E402
from autopar.sharding.mesh import LogicalMesh  # noqa: E402
from autopar.sharding.spec import ShardingSpec  # noqa: E402

MESH = LogicalMesh((2, 4), ("x", "y"))


def test_axis_used_twice_is_rejected():
    with pytest.raises(ValueError, match="used more than once"):
        ShardingSpec((("x",), ("x",)))
    with pytest.raises(ValueError, match="used more than once"):
        ShardingSpec((("x",), ()), partial=("x",))
    with pytest.raises(ValueError, match="non-empty strings"):
        ShardingSpec(((1,),))


def test_partition_spec_round_trip():
    spec = ShardingSpec((("x",), (), ("y", "z")))
    assert spec.to_partition_spec() == P("x", None, ("y", "z"))
    assert ShardingSpec.from_partition_spec(spec.to_partition_spec()) == spec
    assert ShardingSpec.from_partition_spec(P("x"), ndim=3) == ShardingSpec((("x",), (), ()))
    with pytest.raises(ValueError, match="entries"):
        ShardingSpec.from_partition_spec(P("x", "y"), ndim=1)


def test_shapes_bytes_and_text():
    spec = ShardingSpec((("x",), ("y",), ()))
    assert spec.shard_shape((8, 16, 3), MESH) == (4, 4, 3)
    assert spec.num_shards(MESH) == 8
    assert spec.bytes_per_device((8, 16, 3), np.float32, MESH) == 4 * 4 * 3 * 4
    assert spec.divides((8, 16, 3), MESH) and not spec.divides((8, 6, 3), MESH)
    with pytest.raises(ValueError, match="does not divide"):
        spec.shard_shape((8, 6, 3), MESH)
    with pytest.raises(ValueError, match="dims"):
        spec.divides((8, 16), MESH)
    assert str(spec) == "S[x]S[y]R"
    assert str(ShardingSpec(((), ("x", "y")), partial=("z",))) == "RS[x,y]+P[z]"
    assert ShardingSpec.replicated(2).is_replicated and str(ShardingSpec.replicated(0)) == "scalar"
    assert ShardingSpec((("x", "y"),)).shard_shape((16,), MESH) == (2,)


def test_mesh_validation_and_links():
    assert MESH.num_devices == 8 and MESH.size("y") == 4 and MESH.size(("x", "y")) == 8
    with pytest.raises(ValueError, match="differ in length"):
        LogicalMesh((2, 4), ("x",))
    with pytest.raises(ValueError, match="repeat"):
        LogicalMesh((2, 4), ("x", "x"))
    with pytest.raises(ValueError, match="not one of"):
        MESH.size("z")
    with pytest.raises(ValueError, match="links"):
        MESH.axis_links(("x",))
    lx, ly = AxisLink("x", 2, 1e-5, 1e10), AxisLink("y", 4, 1e-6, 1e11)
    m = LogicalMesh((2, 4), ("x", "y"), (lx, ly))
    assert m.axis_links(("y", "x")) == [ly, lx]
    with pytest.raises(ValueError, match="size 4"):
        LogicalMesh((2, 2), ("x", "y"), (lx, ly))


def test_to_jax_mesh():
    devices = jax.devices()[:8]
    mesh = MESH.to_jax_mesh(devices)
    assert dict(mesh.shape) == {"x": 2, "y": 4}
    assert mesh.devices[1, 2] == devices[6]
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="exactly"):
        MESH.to_jax_mesh(devices[:4])
