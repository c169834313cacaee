"""recbole_ext: published recommenders as first-class RecBole 1.2.1 models.

``import recbole_ext`` applies the compat shims for the modern stack and registers every model declared under
the ``recbole.models`` entry-point group, so RecBole's own ``run_recbole`` / ``load_data_and_model`` find them.
"""

from recbole_ext import compat

compat.apply()

from recbole_ext import registry  # noqa: E402  (RecBole must be patched-for-stack before models import)

registry.register_all()

from recbole_ext.inference import TrainedModel, recommend  # noqa: E402
from recbole_ext.quick_start import load, run  # noqa: E402

__all__ = ["run", "load", "recommend", "TrainedModel", "registry", "compat"]
__version__ = "0.1.0"
