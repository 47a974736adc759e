"""pdlink.cloud"""
