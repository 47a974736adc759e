"""pdlink.android_bridge"""
