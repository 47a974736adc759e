"""pdlink.traces: public request traces (Azure LLM inference 2023, Mooncake) as workloads, and prompts of real
text cut to their lengths. Nothing is read until a loader is called."""

from pdlink.traces.azure import load_azure_csv
from pdlink.traces.format_error import TraceFormatError
from pdlink.traces.location import NAMED_TRACES, TRACES_DIR_ENV, TRACES_DIR_FLAG, trace_path, traces_dir
from pdlink.traces.mooncake import load_mooncake_jsonl
from pdlink.traces.prompt_synthesizer import PromptSynthesizer, synthesize_prompts
from pdlink.traces.request import MOONCAKE_BLOCK_TOKENS, TraceRequest
from pdlink.traces.workload import Workload, load_trace

__all__ = [
    "MOONCAKE_BLOCK_TOKENS", "NAMED_TRACES", "PromptSynthesizer", "TRACES_DIR_ENV", "TRACES_DIR_FLAG",
    "TraceFormatError", "TraceRequest", "Workload", "load_azure_csv", "load_mooncake_jsonl", "load_trace",
    "synthesize_prompts", "trace_path", "traces_dir",
]
