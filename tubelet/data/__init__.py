"""tubelet.data"""
