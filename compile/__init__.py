"""pdlink.compile"""
