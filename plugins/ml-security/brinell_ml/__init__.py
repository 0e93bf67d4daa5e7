"""Brinell's built-in ML-security tasks: thin, seeded wrappers around ART.

Modules: ``data`` (datasets), ``models`` (training, MLflow save/load), ``attacks`` (evasion,
membership inference, backdoor poisoning), ``defenses`` (preprocessing and training-time
defenses) and ``metrics``. Nothing is imported here: ART, scikit-learn, torch and MLflow load
only when a job imports the module it uses.
"""

__version__ = "0.1.0"
