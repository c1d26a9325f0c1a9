"""The HTML report: every seed figure of a model on a dataset in one self-contained page."""

from onnxsight.report.build import Report, build_sections, write_report
from onnxsight.report.sections import SECTIONS, ReportData, ReportOptions

__all__ = ["Report", "ReportData", "ReportOptions", "SECTIONS", "build_sections", "write_report"]
