"""pdlink.traces"""
