"""tubelet.eval"""
