"""pdlink.edge"""
