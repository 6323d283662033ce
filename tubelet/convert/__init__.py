"""tubelet.convert"""
