"""Modal's list prices per second, used by `/stats` to estimate what the measured usage would cost.

Taken on 2026-05-07 from Modal's published pricing (USD per second); override any of them in
`app_settings.pricing` of modalkit.yaml when prices change or you have a contract.
"""

PRICES_TAKEN_ON = "2026-05-07"

GPU_PER_SECOND = {
    "B200": 0.001736,
    "B200+": 0.001736,
    "H200": 0.001261,
    "H100": 0.001097,
    "H100!": 0.001097,
    "RTX-PRO-6000": 0.000842,
    "A100-80GB": 0.000694,
    "A100": 0.000583,
    "A100-40GB": 0.000583,
    "L40S": 0.000542,
    "A10": 0.000306,
    "A10G": 0.000306,
    "L4": 0.000222,
    "T4": 0.000164,
}
CPU_CORE_PER_SECOND = 0.0000131
MEMORY_GIB_PER_SECOND = 0.00000222
# What Modal reserves when cpu / memory are not configured.
DEFAULT_CPU_CORES = 0.125
DEFAULT_MEMORY_MIB = 128
